"""Issue 14, item 6: the recipe, SimCLR and NPID at the recipe's wall time (the 30-minute
budget), from the run_recipe.py work dirs; mean +- sample std over seeds and the
effect rule of run_ablation.py (a difference is an effect only when it exceeds the
larger seed spread).

    python results/issue14/full30/summarize.py --runs=/work/runs > results/issue14/full30/table.md

With ``--rows=name:work_dir,...`` (the first row is the reference) it tables other runs,
e.g. the time-budgeted recipe, SimCLR and NPID (results/issue14/budget28/); a run with
a time budget adds its plan (the first plan's epochs and the end it expected, how many
re-plans moved the end, the epochs trained and the end it had, seconds after its start).
"""
import json
import math
import os
import statistics

from absl import app, flags
from calib_times import epoch_seconds  # this directory (run as a script)

from tf_instcls.training import stages

flags.DEFINE_string("runs", "runs", "Directory holding the run_recipe.py work dirs.")
flags.DEFINE_list("rows", [], "name:work_dir pairs, the reference first (default: item 6's "
                  "three rows).")
FLAGS = flags.FLAGS

ROWS = [  # (name, work dir, what it is)
    ("recipe", "r24_100", "the recipe (gin/cifar10_subset_npz.gin), 100 epochs"),
    ("SimCLR", "r24_simclr115", "+ gin/ablations/simclr.gin, 115 epochs"),
    ("NPID (NCE, m = 400)", "r24_npid95", "+ gin/ablations/npid.gin, npid_noise = 400, 95 epochs"),
]


def stats(values):
    mean = statistics.mean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def effect(diff, spread, other_spread):
    """run_ablation.py's rule: an effect only when |diff| exceeds the larger seed spread;
    no call when either side has one seed (its spread is nan, whichever side it is)."""
    if math.isnan(spread) or math.isnan(other_spread):
        return "no call (1 seed)"
    return "yes" if abs(diff) > max(spread, other_spread) else "no"


def _plan(run_dir):
    """A time-budgeted run's plan and when it really ended (seconds after its start)."""
    records = stages.read(run_dir)  # [] for runs whose records kept only metrics.jsonl
    plans = [r for r in records if r.get("stage") == "plan"]
    if not plans:
        return {}
    start = next(r for r in records if r.get("stage") == "startup")
    started = start["time"] - start["seconds"]
    changed = [r for r in plans[1:] if r.get("changed")]  # re-plans that moved the end
    return {"planned_epochs": plans[0]["planned_epochs"], "plan": plans[0],
            "replans": len(changed),
            "expected_end_s": plans[0]["expected_end_s"],
            "ended_s": round(max(r["time"] for r in records) - started, 1)}


def seed_rows(work):
    rows = []
    for name in sorted(os.listdir(work)):
        path = os.path.join(work, name, "recipe_result.json")
        if not name.startswith("seed") or not os.path.exists(path):
            continue
        with open(path) as f:
            result = json.load(f)
        knn = {(r["model"], r["representation"]): r["top1"] for r in result["knn"]["results"]}
        seconds = epoch_seconds(os.path.join(work, name, "metrics.jsonl"))
        rows.append({"seed": result["seed"], "epochs": result["epochs"],
                     "epoch_loop_s": result["epoch_loop_s"],
                     "train_wall_s": result["train_wall_s"],
                     **_plan(os.path.join(work, name)),
                     "median_epoch_s": statistics.median(seconds),
                     "features": knn[("export", "features")],
                     "embedding": knn[("export", "embedding")]})
    return rows


def finished_seeds(work, wanted=None):
    """{seed: seed_rows' row} of a run_recipe.py work dir: every finished seed, or only
    ``wanted`` (a UsageError names any of them that has not finished)."""
    return pick_seeds({row["seed"]: row for row in seed_rows(work)}, wanted, work)


def pick_seeds(rows, wanted, where):
    """``rows`` ({seed: row}) itself, or only the ``wanted`` seeds; a UsageError names
    ``where`` and any wanted seed it lacks."""
    if wanted is None:
        return rows
    missing = [s for s in wanted if s not in rows]
    if missing:
        raise app.UsageError(f"{where} has no finished seed {missing} (finished: {sorted(rows)})")
    return {s: rows[s] for s in wanted}


def main(argv):
    del argv
    table, out = [], {}
    rows = ROWS if not FLAGS.rows else [(*row.split(":", 1), row.split(":", 1)[1])
                                        for row in FLAGS.rows]
    for name, work, what in rows:
        seeds = seed_rows(os.path.join(FLAGS.runs, work))
        if not seeds:
            continue
        out[name] = {"what": what, "seeds": seeds}
        for key in ("features", "embedding"):
            out[name][key] = stats([s[key] for s in seeds])
        table.append((name, seeds))
    ref = out[rows[0][0]]
    print("| run | seeds | epochs | median epoch s (per seed) | epoch loop s (per seed) "
          "| kNN `features` | kNN `embedding` | `features` vs the recipe | an effect? |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seeds in table:
        row = out[name]
        diff = row["features"][0] - ref["features"][0]
        call = "reference" if row is ref else effect(diff, row["features"][1], ref["features"][1])
        ids = ",".join(str(s["seed"]) for s in seeds)
        median = " / ".join(f"{s['median_epoch_s']:.2f}" for s in seeds)
        loop = " / ".join(f"{s['epoch_loop_s']:.0f}" for s in seeds)
        epochs = " / ".join(str(s["epochs"]) for s in seeds)
        print(f"| {name} | {ids} | {epochs} | {median} | {loop} "
              f"| {row['features'][0]:.2f} +- {row['features'][1]:.2f} "
              f"| {row['embedding'][0]:.2f} +- {row['embedding'][1]:.2f} "
              f"| {diff:+.2f} | {call} |")
    planned = [(name, s) for name, seeds in table for s in seeds if "plan" in s]
    if planned:
        print()
        print("| run | seed | epochs planned first | epoch s (first plan) | expected end s "
              "| re-plans that moved the end | epochs trained | ended s "
              "| train wall s (train.py) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, s in planned:
            print(f"| {name} | {s['seed']} | {s['planned_epochs']} | {s['plan']['epoch_s']} "
                  f"| {s['expected_end_s']} | {s['replans']} | {s['epochs']} "
                  f"| {s['ended_s']} | {s['train_wall_s']:.0f} |")
    print()
    print("```json")
    print(json.dumps(out, indent=1))
    print("```")


if __name__ == "__main__":
    app.run(main)
