"""The epoch loop's overhead (its wall time minus the steps) of bench.sh's four runs, from
their stages.jsonl copies (bench_runs/every{1,5}_round{0,1}); tools/bench_epochs.py now
reports the same figure itself (both through stages.epoch_loop_times).

    python results/issue14/checkpoint_cost/overhead.py > results/issue14/checkpoint_cost/overhead.md
"""
import glob
import os
import statistics

from tf_instcls.training import stages

HERE = os.path.dirname(os.path.abspath(__file__))

print("| run (checkpoint every k epochs, round) | epochs timed | checkpoints in them "
      "| mean epoch in the loop s | mean steps s | mean overhead s (loop - steps) |")
print("|---|---|---|---|---|---|")
for run in sorted(glob.glob(os.path.join(HERE, "bench_runs", "*"))):
    loop = stages.epoch_loop_times(run)
    records = stages.read(run)
    ends = [r["time"] for r in records if r["stage"] == "steps"]  # the timed span: ends[1:]
    saves = sum(1 for r in records if r["stage"] == "checkpoint" and ends[1] < r["time"] < ends[-1])
    wall, steps = statistics.mean(w for w, _ in loop), statistics.mean(s for _, s in loop)
    print(f"| {os.path.basename(run)} | {len(loop)} | {saves} | {wall:.2f} | {steps:.2f} "
          f"| {statistics.mean(w - s for w, s in loop):.3f} |")
