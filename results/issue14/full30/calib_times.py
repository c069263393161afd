"""Per-epoch cost of the 5-epoch calibration runs of calib.sh / calib2.sh: each epoch's
``train_seconds`` (which already includes the miner's time: the loop's epoch clock
starts before on_epoch_begin), epochs 1-4 (epoch 0 traces), the median per run.

    python results/issue14/full30/calib_times.py /work/runs/full30/calib
"""
import json
import os
import statistics
import sys


def epoch_seconds(metrics_path):
    """train_seconds of every epoch after the first (tools/bench_epochs.py's rule)."""
    with open(metrics_path) as f:
        return [e["train_seconds"] for e in map(json.loads, f) if e.get("epoch", 0) > 0]


def main(root):
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "metrics.jsonl")
        if os.path.exists(path):
            seconds = epoch_seconds(path)
            print(f"{name:8s} epochs 1-{len(seconds)}: {' '.join(f'{s:.2f}' for s in seconds)}"
                  f"  median {statistics.median(seconds):.2f} s")


if __name__ == "__main__":
    main(sys.argv[1])
