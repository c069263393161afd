#!/usr/bin/env bash
# Issue 14, item 2: the recipe's CPU train step, input pipeline and epoch loop of two
# checkouts, interleaved (round r: before, after), nothing else should run beside it.
#   1. tools/bench_step_parts.py: the whole train step and the encoder alone (plain
#      Keras), float32 and mixed_bfloat16, on one fixed batch (no input cost);
#   2. tools/bench_pipeline.py: the input pipeline alone (instances/s);
#   3. tools/bench_epochs.py: fresh tools/train.py runs of the recipe on SPLIT, epochs 1-3
#      timed (epoch 0 traces), float32 and mixed_bfloat16.
# The before checkout gets this checkout's bench_step_parts.py (a measuring tool only;
# the code measured is the checkout's tf_instcls).
# Usage: bash tools/bench_speed_before_after.sh BEFORE_DIR AFTER_DIR OUT_DIR SPLIT_NPZ [ROUNDS]
set -euo pipefail
before=${1:?usage: bench_speed_before_after.sh BEFORE_DIR AFTER_DIR OUT_DIR SPLIT_NPZ [ROUNDS]}
after=$(cd "${2:?}" && pwd)
out=${3:?}
split=$(cd "$(dirname "${4:?}")" && pwd)/$(basename "$4")
rounds=${5:-2}
mkdir -p "$out"
copy=$(mktemp -d)/before
cp -r "$before" "$copy"
cp "$after/tools/bench_step_parts.py" "$copy/tools/"
gin=gin/cifar10_subset_npz.gin
for round in $(seq 1 "$rounds"); do
  for tag in before after; do
    dir=$copy; [ "$tag" = after ] && dir=$after
    (cd "$dir" && PYTHONPATH=$dir python tools/bench_step_parts.py --gin_file=$gin \
      --gin_bindings="DataConfig.dataset = 'npz:$split'" \
      --precisions=float32,mixed_bfloat16 --parts=step,plain --rounds=1 --steps=10 --profile \
      --json="$out/${tag}_parts_round${round}.json") > "$out/${tag}_parts_round${round}.log" 2>&1
    (cd "$dir" && PYTHONPATH=$dir python tools/bench_pipeline.py --gin_file=$gin \
      --gin_bindings="DataConfig.dataset = 'npz:$split'" \
      --virtual_devices=0 --batches=30 --json="$out/${tag}_pipeline_round${round}.json") \
      > "$out/${tag}_pipeline_round${round}.log" 2>&1
    echo "$tag round $round: parts $(grep -h -A5 'median ms' "$out/${tag}_parts_round${round}.log" | tail -4 | tr -s ' ' | tr '\n' ';')" \
      "pipeline $(grep -h -o '"pipeline_images_per_sec": [0-9.]*' "$out/${tag}_pipeline_round${round}.json")"
  done
done
for precision in float32 mixed_bfloat16; do
  (cd "$after" && python tools/bench_epochs.py --code_dirs="$copy,$after" --rounds="$rounds" \
    --epochs=4 --dataset="npz:$split" --gin_file=$gin \
    --gin_bindings="ModelConfig.precision = '$precision'" \
    --json="$out/epochs_${precision}.json") > "$out/epochs_${precision}.log" 2>&1
  echo "epochs $precision: $(tail -4 "$out/epochs_${precision}.log" | tr '\n' ';')"
done
