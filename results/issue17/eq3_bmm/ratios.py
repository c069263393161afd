"""Issue 17 item 2: per-round step medians and Eq. 3 / Eq. 1 ratios of a
tools/bench_eq3_before_after.sh output directory (ratios are taken within a round).

    python results/issue17/eq3_bmm/ratios.py results/issue17/eq3_bmm
"""
import glob
import json
import os
import re
import statistics
import sys

root = sys.argv[1]
ms, peak, mm = {}, {}, {}
for path in glob.glob(os.path.join(root, "*_round*.json")):
    name = os.path.basename(path)
    tag, eq, rnd = re.match(r"(before|after)_(eq[13])_round(\d+)\.json", name).groups()
    with open(path) as f:
        rec = json.load(f)[0]
    ms[tag, eq, int(rnd)] = rec["step_ms_median"]
    peak[tag, eq] = rec["alloc_peak_bytes"] / 2**20
    mm[tag, eq, int(rnd)] = rec["gflops"] / rec["matmul_peak_gflops"]
rounds = sorted({r for _, _, r in ms})
ratio = {t: [] for t in ("before", "after")}
speed = {e: [] for e in ("eq1", "eq3")}
print("| round | Eq. 1 before / after ms | Eq. 3 before / after ms | Eq. 3 / Eq. 1 before "
      "| after | Eq. 1 after, % of the run's matmul peak |")
print("|---|---|---|---|---|---|")
for r in rounds:
    for t in ratio:
        ratio[t].append(ms[t, "eq3", r] / ms[t, "eq1", r])
    for e in speed:
        speed[e].append(ms["after", e, r] / ms["before", e, r])
    print(f"| {r} | {ms['before', 'eq1', r]:.0f} / {ms['after', 'eq1', r]:.0f} "
          f"| {ms['before', 'eq3', r]:.0f} / {ms['after', 'eq3', r]:.0f} "
          f"| {ratio['before'][-1]:.3f} | {ratio['after'][-1]:.3f} "
          f"| {100 * mm['after', 'eq1', r]:.0f}% |")
med = statistics.median
print(f"\nEq. 3 / Eq. 1, median of the rounds (range): before {med(ratio['before']):.3f} "
      f"({min(ratio['before']):.3f}-{max(ratio['before']):.3f}), after {med(ratio['after']):.3f} "
      f"({min(ratio['after']):.3f}-{max(ratio['after']):.3f})")
print(f"after / before, median (range): Eq. 1 {med(speed['eq1']):.3f} "
      f"({min(speed['eq1']):.3f}-{max(speed['eq1']):.3f}), Eq. 3 {med(speed['eq3']):.3f} "
      f"({min(speed['eq3']):.3f}-{max(speed['eq3']):.3f})")
print("alloc peak MiB: " + ", ".join(f"{t} {e} {v:.0f}" for (t, e), v in sorted(peak.items())))
