"""Issue 17 item 2: the Eq. 3 / Eq. 1 ratios of ``bench_classifier.py --paired`` workers,
per worker and pooled over the rounds, for each code version. A version's records are
``<tag>_round*.json`` in the directory; tags default to ``before after``.

    python results/issue17/eq3_sorted/pool.py results/issue17/eq3_paired    # 9th session
    python results/issue17/eq3_sorted/pool.py results/issue17/eq3_sorted    # run 1
    python results/issue17/eq3_sorted/pool.py results/issue17/eq3_sorted run2_before run2_final
    python results/issue17/eq3_sorted/pool.py results/issue17/eq3_sorted run3_before run3_gate
"""
import glob
import json
import os
import statistics
import sys

root = sys.argv[1]
for tag in sys.argv[2:] or ("before", "after"):
    pooled = []
    for path in sorted(glob.glob(os.path.join(root, f"{tag}_round*.json"))):
        with open(path) as f:
            (rec,) = json.load(f)
        pooled += rec["ratios"]
        print(f"{tag} {os.path.basename(path)}: Eq. 1 {rec['eq1_ms_median']:.0f} ms, Eq. 3 "
              f"{rec['eq3_ms_median']:.0f} ms, ratio median {rec['ratio_median']:.3f}")
    pooled.sort()
    q = len(pooled) // 4
    print(f"{tag}: {len(pooled)} pairs, Eq. 3 / Eq. 1 median {statistics.median(pooled):.3f}, "
          f"interquartile {pooled[q]:.3f}-{pooled[-1 - q]:.3f}, "
          f"fraction of pairs <= 1.05: {sum(r <= 1.05 for r in pooled) / len(pooled):.2f}\n")
