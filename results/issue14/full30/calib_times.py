"""Per-epoch cost of the 5-epoch calibration runs of calib.sh / calib2.sh: each epoch's
train step time plus its mining, epochs 1-4 (epoch 0 traces), the median per run.

    python results/issue14/full30/calib_times.py /work/runs/full30/calib
"""
import json
import os
import statistics
import sys

root = sys.argv[1]
for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "metrics.jsonl")
    if not os.path.exists(path):
        continue
    with open(path) as f:
        epochs = [json.loads(line) for line in f]
    seconds = [e["train_seconds"] + e.get("mining_seconds", 0.0) for e in epochs[1:]]
    print(f"{name:8s} epochs 1-{len(seconds)}: {' '.join(f'{s:.2f}' for s in seconds)}"
          f"  median {statistics.median(seconds):.2f} s")
