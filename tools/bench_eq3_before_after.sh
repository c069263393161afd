#!/usr/bin/env bash
# Issue 17, items 1 and 2: the classifier step (T = 1, N = 262,144, D = 128, B = 1024,
# unchunked) of two checkouts, Eq. 1 and Eq. 3 (K = 100, alpha = 0.2), interleaved:
# round r runs before-Eq.1, after-Eq.1, before-Eq.3, after-Eq.3, each a fresh
# tools/bench_classifier.py process of that checkout.
# Usage: bash tools/bench_eq3_before_after.sh BEFORE_DIR AFTER_DIR OUT_DIR [ROUNDS]
set -euo pipefail
before=${1:?usage: bench_eq3_before_after.sh BEFORE_DIR AFTER_DIR OUT_DIR [ROUNDS]}
after=${2:?}
out=${3:?}
rounds=${4:-2}
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  for smoothing in 0.0 0.2; do
    for tag in before after; do
      dir=$before; [ "$tag" = after ] && dir=$after
      eq=eq1; [ "$smoothing" = 0.2 ] && eq=eq3
      PYTHONPATH=$dir python "$dir/tools/bench_classifier.py" --virtual_devices=1 \
        --layouts=sharded --num_instances=262144 --dim=128 --batch_size=1024 \
        --smoothing=$smoothing --num_hard=100 --steps=5 --warmup=2 --torch_peer=false \
        --json="$out/${tag}_${eq}_round${round}.json" > "$out/${tag}_${eq}_round${round}.log" 2>&1
      echo "$tag $eq round $round: $(grep -h -m1 -o '"step_ms_median": [0-9.]*' "$out/${tag}_${eq}_round${round}.json")"
    done
  done
done
