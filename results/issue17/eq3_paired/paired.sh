#!/bin/bash
# Issue 17 item 2: Eq. 3 / Eq. 1 in one worker (--paired), before (14f91e4's loss, in
# /work/frozen34) and after (the batched-matmul label term, /work/frozen35), 3 rounds.
while pgrep -f "r24_alpha04" > /dev/null; do sleep 10; done
. /work/main/.venv/bin/activate
O=/work/runs/full30/paired
mkdir -p $O
for r in 1 2 3; do
  for tag in before after; do
    dir=/work/frozen34; [ $tag = after ] && dir=/work/frozen35
    python $dir/tools/bench_classifier.py --paired --virtual_devices=1 --layouts=sharded \
      --num_instances=262144 --dim=128 --batch_size=1024 --smoothing=0.2 --num_hard=100 \
      --steps=10 --warmup=2 --json=$O/${tag}_round$r.json > $O/${tag}_round$r.log 2>&1
    echo "$tag round $r: $(grep -h 'all .* pairs' $O/${tag}_round$r.log)"
  done
done
echo paired done
