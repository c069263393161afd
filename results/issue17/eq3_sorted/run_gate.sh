#!/bin/bash
# Issue 17 item 2 (rules.md, addendum 2): before = e9fcfd9 in /work/frozen_before, gate =
# 1896534 in /work/frozen_gate (git worktree add <dir> <commit>). Writes into this directory.
set -u
. /work/main/.venv/bin/activate
O=$(cd "$(dirname "$0")" && pwd)
for r in 1 2 3; do
  for tag in before gate; do
    dir=/work/frozen_$tag
    python $dir/tools/bench_classifier.py --paired --virtual_devices=1 --layouts=sharded \
      --num_instances=262144 --dim=128 --batch_size=1024 --smoothing=0.2 --num_hard=100 \
      --steps=10 --warmup=2 --json=$O/run3_${tag}_round$r.json > $O/run3_${tag}_round$r.log 2>&1
    echo "$tag round $r: $(grep -h 'all .* pairs' $O/run3_${tag}_round$r.log)"
  done
done
for tag in before gate; do
  dir=/work/frozen_$tag
  python $dir/tools/bench_classifier.py --virtual_devices=1 --num_instances=262144 \
    --batch_size=4096 --layouts=sharded --chunk_size=0,512 --reductions=mean --steps=5 \
    --warmup=2 --repeats=2 --torch_peer=false --trace_memory_mib=1 \
    --json=$O/run3_chunk_mean_$tag.json > $O/run3_chunk_mean_$tag.log 2>&1
  python $dir/tools/bench_classifier.py --virtual_devices=1 --num_instances=262144 \
    --batch_size=1024 --layouts=sharded --chunk_size=0 --smoothing=0.2 --num_hard=100 \
    --steps=3 --warmup=2 --repeats=1 --torch_peer=false --trace_memory_mib=16 \
    --json=$O/run3_eq3_memory_$tag.json > $O/run3_eq3_memory_$tag.log 2>&1
  python $dir/tools/bench_classifier.py --virtual_devices=1 --num_instances=262144 \
    --batch_size=4096 --layouts=sharded --chunk_size=512 --reductions=mean --smoothing=0.2 \
    --num_hard=100 --steps=3 --warmup=2 --repeats=1 --torch_peer=false --trace_memory_mib=0.5 \
    --json=$O/run3_eq3_chunk_memory_$tag.json > $O/run3_eq3_chunk_memory_$tag.log 2>&1
  echo "memory $tag done"
done
echo all done
