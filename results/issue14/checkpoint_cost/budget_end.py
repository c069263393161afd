"""Issue 14, item 3: how far past its budget each 28-minute run's epoch loop ended, and why,
read from the committed run records (each seed's stages.jsonl).

    python results/issue14/checkpoint_cost/budget_end.py \
        > results/issue14/checkpoint_cost/budget_end.md

The budget's clock starts at run_pretraining's start: a plan record's time less its
elapsed_s. The loop ends at the last epoch's record ("steps", "mining" or "checkpoint"),
before the export. Per run: the last plan (its epoch, of how many planned, its epoch
seconds and expected end), the mean epoch after it, and the end against the budget. The
planner did not re-plan in the plan's last tenth (before 2026-12-02, third session), so
whatever the machine did there went straight into the end.

"With the late check" replays today's planner (``budget.EpochPlanner``, whose check in the
plan's last tenth may cut the plan, or undo a cut, but never lengthen it past the last
plan) on the same run's recorded epoch times from its last plan on: where it would have
cut the plan, and where the loop would then have ended (the epochs' times as recorded; a
cut changes only how many of them run). Runs planned
once at epoch 3 (the first budget code, before re-plans) are not replayed: today's
planner would have re-planned them all along.
"""
import statistics

from shares import budget_runs  # this directory (run as a script)

from tf_instcls.training import budget, stages

LOOP = ("steps", "mining", "checkpoint")


def run_row(run_dir):
    records = list(stages.read(run_dir))
    plans = [r for r in records if r.get("stage") == "plan"]
    if not plans:
        return None
    started = plans[0]["time"] - plans[0]["elapsed_s"]
    last = plans[-1]
    end = max(r["time"] for r in records if r.get("stage") in LOOP) - started
    after = [r["time"] for r in records
             if r.get("stage") == "steps" and r["time"] > last["time"]]
    epoch_after = (statistics.mean(b - a for a, b in zip(after, after[1:]))
                   if len(after) > 2 else float("nan"))
    row = dict(planned=last["planned_epochs"], at=last["next_epoch"],
               epoch_s=last["epoch_s"], expected=last["expected_end_s"],
               epoch_after=epoch_after, end=end, over=end - last["budget_s"])
    if len(plans) > 1:
        ends = {r["epoch"]: r["time"] - started for r in records if r.get("stage") == "steps"}
        epochs = replay(ends, last)
        # the loop ends that long after the last epoch's steps (its checkpoint), as recorded
        row["replay"] = (epochs, ends[epochs - 1] + end - ends[last["planned_epochs"] - 1])
    return row


def replay(ends, last):
    """The epochs of the run under the late check, from its last plan on; ``ends``:
    {epoch: its steps' end, s after the start}."""
    planned = last["planned_epochs"]
    planner = budget.EpochPlanner(budget_s=last["budget_s"], started=0.0,
                                  max_epochs=planned, agree=lambda values: values,
                                  planned=planned)
    planner._skip_first = False  # the run's own first (traced) epoch is long past
    for epoch in range(last["next_epoch"], planned):
        start = ends[epoch - 1]
        if planner.ready(epoch):
            planner.plan(epoch, now=start)
            if epoch >= planner.planned:
                break
        planner.start_epoch(now=start)
        planner.end_epoch(full=True, now=ends[epoch])
    return min(planner.planned, planned)


def main():
    rows = []
    for work, seed, run_dir in budget_runs():
        row = run_row(run_dir)
        if row:
            rows.append((work, seed, row))
    print("| work dir | seed | last plan: at epoch, of | its epoch s | its expected end s "
          "| mean epoch s after it | loop's end s | past the budget s "
          "| with the late check: epochs | past the budget s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for work, seed, r in rows:
        epochs, end = r.get("replay", (None, None))
        late = (f"{epochs} | {end - r['end'] + r['over']:+.0f}" if epochs
                else "not replayed | -")
        print(f"| {work} | {seed[4:]} | {r['at']} of {r['planned']} | {r['epoch_s']:.2f} "
              f"| {r['expected']:.0f} | {r['epoch_after']:.2f} | {r['end']:.0f} "
              f"| {r['over']:+.0f} | {late} |")
    for name, subset in (("all", rows), ("re-planned (replayed)",
                                         [x for x in rows if "replay" in x[2]])):
        over = [r["over"] for *_, r in subset]
        print(f"\n{name}, {len(subset)} runs: past the budget by {min(over):+.0f} to "
              f"{max(over):+.0f} s (median {statistics.median(over):+.0f} s); more than 30 s "
              f"past: {sum(o > 30 for o in over)}")
        if name != "all":
            late = [r["replay"][1] - r["end"] + r["over"] for *_, r in subset]
            cut = sum(r["replay"][0] < r["planned"] for *_, r in subset)
            print(f"with the late check (replayed): {min(late):+.0f} to {max(late):+.0f} s "
                  f"(median {statistics.median(late):+.0f} s); more than 30 s past: "
                  f"{sum(o > 30 for o in late)}; plans cut: {cut}, by "
                  + ", ".join(str(r["planned"] - r["replay"][0]) for *_, r in subset
                              if r["replay"][0] < r["planned"]) + " epochs")


if __name__ == "__main__":
    main()
