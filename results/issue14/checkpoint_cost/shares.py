"""Issue 14, item 2: what the per-epoch checkpoint costs the 28-minute budget runs, read from
the committed run records (each seed's stages.jsonl: one "steps", "mining" and "checkpoint"
record per epoch, each with its seconds).

    python results/issue14/checkpoint_cost/shares.py > results/issue14/checkpoint_cost/shares.md

Per run: epochs, the median seconds of an epoch's steps and of its checkpoint, and the
checkpoint's share of steps + mining + checkpoint (the epoch loop's recorded work). At a
wall-time budget that share is the share of epochs the checkpoints take from the run.
"""
import glob
import os
import statistics

from tf_instcls.training import stages

HERE = os.path.dirname(os.path.abspath(__file__))


def seconds(run_dir):
    by_stage = {"steps": [], "mining": [], "checkpoint": []}
    for record in stages.read(run_dir):
        if record.get("stage") in by_stage:
            by_stage[record["stage"]].append(record["seconds"])
    return by_stage


def budget_runs():
    """(work dir, seed dir, its path) of every committed 28-minute budget run under
    results/issue14 that has a stages.jsonl; a run copied into two results directories
    counts once."""
    pattern = os.path.join(HERE, "..", "*", "r24*budget28", "seed*", "stages.jsonl")
    seen = set()
    for path in sorted(glob.glob(pattern)):
        parts = path.split(os.sep)
        run = (parts[-3], parts[-2])
        if run not in seen:
            seen.add(run)
            yield (*run, os.path.dirname(path))


def main():
    rows = []
    for *run, run_dir in budget_runs():
        s = seconds(run_dir)
        if not s["checkpoint"]:
            continue
        total = sum(map(sum, s.values()))
        rows.append((*run, len(s["steps"]), statistics.median(s["steps"]),
                     statistics.median(s["checkpoint"]), 100 * sum(s["checkpoint"]) / total))
    print("| work dir | seed | epochs | median steps s an epoch | median checkpoint s "
          "| checkpoint share of the epoch loop |")
    print("|---|---|---|---|---|---|")
    for work, seed, epochs, steps, ckpt, share in rows:
        print(f"| {work} | {seed[4:]} | {epochs} | {steps:.2f} | {ckpt:.3f} | {share:.1f}% |")
    shares = [r[-1] for r in rows]
    print(f"\n{len(rows)} runs: checkpoint share {min(shares):.1f}-{max(shares):.1f}% "
          f"(median {statistics.median(shares):.1f}%)")


if __name__ == "__main__":
    main()
