#!/usr/bin/env bash
# The README's main job (tools/train.py, digits) for several checkouts and seeds,
# interleaved, printing each run's final kNN line: does a change keep the main job's
# accuracy? (Its kNN moves by a few points from seed to seed, so compare over seeds.)
# Usage: bash tools/digits_seeds.sh OUT_DIR "SEEDS" CODE_DIR [CODE_DIR ...]
#   e.g. bash tools/digits_seeds.sh runs/digits_cmp "0 1 2" /tmp/before .
set -euo pipefail
out=${1:?usage: digits_seeds.sh OUT_DIR "SEEDS" CODE_DIR [CODE_DIR ...]}
seeds=${2:?}
shift 2
mkdir -p "$out"
for seed in $seeds; do
  for dir in "$@"; do
    dir=$(cd "$dir" && pwd)
    name=$(basename "$dir")_s$seed
    rm -rf "$out/$name"
    PYTHONPATH=$dir python "$dir/tools/train.py" --model_dir="$out/$name" \
      --gin_bindings="TrainConfig.seed = $seed" > "$out/$name.log" 2>&1
    echo "$name: $(grep '^kNN top-1' "$out/$name.log")"
  done
done
