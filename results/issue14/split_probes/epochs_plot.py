"""Issue 14, item 3: kNN top-1 of the export's ``features`` against the epochs each run got,
for every 24-px run of the recipe and of SimCLR that run_recipe.py recorded (fixed epochs
and 28-minute budgets, all splits, all seeds). With a wall-time budget the epochs are the
machine's speed on the day, so this shows how much of a difference between two runs the
epochs explain, method by method.

    python results/issue14/split_probes/epochs_plot.py \
        --out=results/issue14/split_probes/epochs.png > results/issue14/split_probes/epochs.md

Reads the committed copies under results/issue14 (each run's recipe.json and
seed*/recipe_result.json; a run found in both counts once). Prints one row per run; per
method, the least-squares slope of top-1 against epochs (points per 100 epochs); and each of
ours against SimCLR at equal epochs: a least-squares fit of top-1 on one offset per split,
a common slope in epochs and an offset for our method, over the runs of at least
``--min_epochs`` epochs (the budget runs), with the offset's standard error and the fit's
residual std (what is left of the seed-to-seed spread once epochs and split are fitted).
"""
import glob
import json
import os

import numpy as np
from absl import app, flags

flags.DEFINE_string("results", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                    "results/issue14.")
flags.DEFINE_string("out", "", "Where to write the plot (PNG); none if empty.")
flags.DEFINE_integer("min_epochs", 150, "Runs with fewer epochs stay out of the equal-epochs fit.")
FLAGS = flags.FLAGS

# (method, work dirs under results/issue14): the 24-px recipe with crops of 8-100% and
# tau 0.1 (fixed 100 epochs, then budgets), the same with the paper's tau 0.15, and SimCLR
# (gin/ablations/simclr.gin on the same recipe).
METHODS = [
    ("ours, tau 0.1", ["res24/r24_100", "budget28/r24_budget28", "budget28/r24s1_budget28",
                       "budget28/r24s2_budget28"]),
    ("ours, tau 0.15", ["split_probes/r24_t015_budget28", "split_probes/r24s1_t015_budget28",
                        "split_probes/r24s2_t015_budget28", "split_probes/r24_k5_budget28",
                        "split_probes/r24s1_k5_budget28", "split_probes/r24s2_k5_budget28"]),
    ("SimCLR", ["res24/r24_simclr", "full30/r24_simclr115", "budget28/r24_simclr_budget28",
                "budget28/r24s1_simclr_budget28", "budget28/r24s2_simclr_budget28",
                "split_probes/r24s1_simclr_budget28", "split_probes/r24s2_simclr_budget28",
                "split_probes/r24_simclr_budget28"]),
]


def _features(run):
    return next(r["top1"] for r in run["knn"]["results"]
                if r["model"] == "export" and r["representation"] == "features")


def _runs(work):
    """{seed: (epochs, features top-1)} from a work dir's recipe.json and seed results."""
    found = {}
    recipe = os.path.join(work, "recipe.json")
    split = 0
    if os.path.exists(recipe):
        with open(recipe) as f:
            summary = json.load(f)
        split = summary.get("split_seed", 0)
        for run in summary["runs"]:
            found[run["seed"]] = (run["epochs"], _features(run))
    for path in glob.glob(os.path.join(work, "seed*", "recipe_result.json")):
        with open(path) as f:
            run = json.load(f)
        found[run["seed"]] = (run["epochs"], _features(run))
    return split, found


def slope(points):
    """Least-squares slope of top-1 against epochs, in points per 100 epochs."""
    epochs, top1 = zip(*points)
    return 100 * np.polyfit(epochs, top1, 1)[0]


def equal_epochs(ours, other, min_epochs, own_slopes=False):
    """Least squares of top-1 on [one indicator per split, ours?, epochs / 100] over the
    (split, epochs, top-1) points of both methods with >= min_epochs epochs: our offset at
    equal epochs and split, the common slope, their standard errors, the residual std."""
    points = [(s, e, v, 1.0) for s, e, v in ours if e >= min_epochs]
    points += [(s, e, v, 0.0) for s, e, v in other if e >= min_epochs]
    splits = sorted({p[0] for p in points})
    x = np.array([[float(s == t) for t in splits] + [o, e / 100] for s, e, _, o in points])
    if own_slopes:  # our slope minus SimCLR's as one more column
        x = np.c_[x, x[:, -2] * x[:, -1]]
    y = np.array([v for _, _, v, _ in points])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    var = resid @ resid / (len(y) - x.shape[1])
    cov = var * np.linalg.inv(x.T @ x)
    k = len(splits)
    return {"n_ours": int(sum(p[3] for p in points)), "n_other": int(sum(1 - p[3] for p in points)),
            "offset": coef[k], "offset_se": cov[k, k] ** 0.5, "slope": coef[k + 1],
            "slope_se": cov[k + 1, k + 1] ** 0.5, "residual_std": var ** 0.5,
            "split_offsets": dict(zip(splits, coef[:k])),
            "slope_diff": coef[-1] if own_slopes else 0.0,
            "slope_diff_se": cov[-1, -1] ** 0.5 if own_slopes else 0.0}


def main(argv):
    del argv
    series = {}
    print("| method | work dir | split | seed | epochs | `features` top-1 |")
    print("|---|---|---|---|---|---|")
    for method, works in METHODS:
        seen = {}
        for work in works:
            path = os.path.join(FLAGS.results, work)
            if not os.path.isdir(path):
                continue
            split, runs = _runs(path)
            for seed, (epochs, top1) in sorted(runs.items()):
                key = (os.path.basename(work), seed)  # a run copied to two places counts once
                if key in seen:
                    continue
                seen[key] = (split, epochs, top1)
                print(f"| {method} | {work} | {split} | {seed} | {epochs} | {top1:.2f} |")
        series[method] = list(seen.values())
    print()
    print("| method | runs | slope, points per 100 epochs (least squares, all splits) |")
    print("|---|---|---|")
    for method, points in series.items():
        print(f"| {method} | {len(points)} | {slope([(e, v) for _, e, v in points]):+.2f} |")
    print()
    print(f"| ours against SimCLR at equal epochs (runs of >= {FLAGS.min_epochs} epochs) | runs "
          "(ours + SimCLR) | our offset, points (standard error) | slope, points per 100 "
          "epochs | residual std |")
    print("|---|---|---|---|---|")
    fits = {}
    for method in ("ours, tau 0.1", "ours, tau 0.15"):
        fit = equal_epochs(series[method], series["SimCLR"], FLAGS.min_epochs)
        print(f"| {method} | {fit['n_ours']} + {fit['n_other']} | {fit['offset']:+.2f} "
              f"({fit['offset_se']:.2f}) | {fit['slope']:+.2f} ({fit['slope_se']:.2f}) "
              f"| {fit['residual_std']:.2f} |")
        fits[method] = fit
    print()
    print("| slopes fitted per method | our slope | SimCLR's | ours - SimCLR's (standard error) |")
    print("|---|---|---|---|")
    for method in fits:
        fit = equal_epochs(series[method], series["SimCLR"], FLAGS.min_epochs, own_slopes=True)
        print(f"| {method} | {fit['slope'] + fit['slope_diff']:+.2f} | {fit['slope']:+.2f} "
              f"| {fit['slope_diff']:+.2f} ({fit['slope_diff_se']:.2f}) |")
    print()
    print("| by the fit: epochs for 55% on `features` | " + " | ".join(
        f"split {t}" for t in fits["ours, tau 0.15"]["split_offsets"]) + " |")
    print("|---" * (1 + len(fits["ours, tau 0.15"]["split_offsets"])) + "|")
    for method, fit in fits.items():
        for name, offset in ((method, fit["offset"]), (f"SimCLR (fit with {method})", 0.0)):
            print(f"| {name} | " + " | ".join(
                f"{100 * (55 - base - offset) / fit['slope']:.0f}"
                for base in fit["split_offsets"].values()) + " |")
    if not FLAGS.out:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"ours, tau 0.1": "tab:blue", "ours, tau 0.15": "tab:green", "SimCLR": "tab:red"}
    markers = {0: "o", 1: "s", 2: "^"}
    for method, points in series.items():
        for split in sorted({s for s, _, _ in points}):
            xs = [e for s, e, _ in points if s == split]
            ys = [v for s, _, v in points if s == split]
            ax.scatter(xs, ys, c=colours[method], marker=markers.get(split, "x"), s=36,
                       label=f"{method}, split {split}")
    ax.set_xlabel("epochs trained (fixed, or what the 28-min budget gave on the day)")
    ax.set_ylabel("weighted kNN top-1 of `features`, %")
    ax.set_title("The recipe and SimCLR against the epochs they got (24 px views)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(FLAGS.out, dpi=120)


if __name__ == "__main__":
    app.run(main)
