#!/bin/bash
# Issue 17 item 2 (rules.md): before = e9fcfd9 in /work/frozen_before, after = 7308cfc in
# /work/frozen_after (git worktree add <dir> <commit>). Writes into this directory.
set -u
. /work/main/.venv/bin/activate
O=$(cd "$(dirname "$0")" && pwd)
for r in 1 2 3; do
  for tag in before after; do
    dir=/work/frozen_$tag
    python $dir/tools/bench_classifier.py --paired --virtual_devices=1 --layouts=sharded \
      --num_instances=262144 --dim=128 --batch_size=1024 --smoothing=0.2 --num_hard=100 \
      --steps=10 --warmup=2 --json=$O/${tag}_round$r.json > $O/${tag}_round$r.log 2>&1
    echo "$tag round $r: $(grep -h 'all .* pairs' $O/${tag}_round$r.log)"
  done
done
for tag in before after; do
  dir=/work/frozen_$tag
  python $dir/tools/bench_classifier.py --virtual_devices=1 --num_instances=262144 \
    --batch_size=4096 --layouts=sharded --chunk_size=0,512 --reductions=mean --steps=5 \
    --warmup=2 --repeats=2 --torch_peer=false --trace_memory_mib=64 \
    --json=$O/chunk_mean_$tag.json > $O/chunk_mean_$tag.log 2>&1
  echo "chunk mean $tag done"
done
echo all done
