#!/bin/bash
# Issue 17 item 2, after run 3: the chunked Eq. 3 mean's allocator peak (B = 4096, chunk
# 512, K = 100) in 3 more processes per version, interleaved, to see how much the same
# code's figure moves between processes (run 3's two figures differed by 2.0 MiB, all of it
# in the bytes resident before the step). Added after run 3's result, and labelled so.
set -u
. /work/main/.venv/bin/activate
O=$(cd "$(dirname "$0")" && pwd)/memory_repeats
mkdir -p $O
for r in 1 2 3; do
  for tag in before gate; do
    python /work/frozen_$tag/tools/bench_classifier.py --virtual_devices=1 --num_instances=262144 \
      --batch_size=4096 --layouts=sharded --chunk_size=512 --reductions=mean --smoothing=0.2 \
      --num_hard=100 --steps=3 --warmup=2 --repeats=1 --torch_peer=false --trace_memory_mib=0.5 \
      --json=$O/${tag}_$r.json > $O/${tag}_$r.log 2>&1
  done
done
python - "$O" <<'PY'
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    (r,) = json.load(open(path))
    print(os.path.basename(path), "resident", r["alloc_resident_bytes"], "peak", r["alloc_peak_bytes"],
          "step's own", r["live_at_peak"]["peak_step_bytes"])
PY
