"""Issue 14, item 3 on more than one split: the recipe against SimCLR at the same 28-minute
budget, split by split (``tools/run_recipe.py --split_seed``), and the per-split
differences pooled. ``--names`` renames the two sides, so any two configurations can be
compared the same way (e.g. the recipe with a linear head against the recipe).

    python results/issue14/full30/splits.py --runs=/work/runs \
        --splits=0:r24_budget28:r24_simclr_budget28,1:r24s1_budget28:r24s1_simclr_budget28,...

Per split: mean +- sample std over seeds of weighted-kNN top-1 (``features`` and
``embedding`` of the export), raw pixels and random init (as run_recipe.py scores them),
side a minus side b (by default the recipe minus SimCLR), and whether that difference is
an effect by run_ablation.py's rule (it exceeds the larger of the two seed spreads;
summarize.py's ``effect``). Pooled: the per-split differences' mean +- std over splits,
and per seed (seed s of a minus seed s of b on the same split; the seeds are not
otherwise paired). Raw pixels and random init are side a's (first) work dir's. ``--seeds``
keeps only the given seeds of both sides, e.g. the runs made in adjacent same-conditions
pairs. A side may join work dirs with "+" (their seeds pooled; a seed in two is an error).
"""
import json
import math
import os

from absl import app, flags
from summarize import (  # this directory (run as a script); --runs
    effect,
    finished_seeds,
    pick_seeds,
    stats,
)

flags.DEFINE_list("splits", [], "split:work_dir_a:work_dir_b triples (a minus b is tabled); "
                  "a side may join work dirs with '+' (their seeds pooled).")
flags.DEFINE_list("seeds", [], "Only these seeds of each side (e.g. the same-conditions runs); "
                  "default: every finished seed.")
flags.DEFINE_list("names", ["recipe", "SimCLR"], "What the two work dirs of each triple "
                  "are called in the tables (e.g. linear head,recipe).")
FLAGS = flags.FLAGS

KEYS = ("features", "embedding")


def _seeds(works):
    """{seed: summarize.py's row} for the seeds that finished (those of --seeds only) in
    one work dir, or in several joined by "+" (e.g. a recipe's runs before and after a
    change that leaves its training unchanged); a seed found in two of them is an error."""
    found = {}
    for work in works.split("+"):
        rows = finished_seeds(os.path.join(FLAGS.runs, work))
        twice = sorted(set(rows) & set(found))
        if twice:
            raise app.UsageError(f"seed(s) {twice} of {work} are also in another of {works}")
        found.update(rows)
    return pick_seeds(found, [int(s) for s in FLAGS.seeds] if FLAGS.seeds else None,
                      os.path.join(FLAGS.runs, works))


def _fmt(mean, std):
    return f"{mean:.2f} +- {std:.2f}" if not math.isnan(std) else f"{mean:.2f}"


def _baselines(work):
    with open(os.path.join(work, "recipe.json")) as f:
        summary = json.load(f)["summary"]
    return summary["raw_pixels"]["mean"], summary["random_init"]["mean"]


def main(argv):
    del argv
    if not FLAGS.splits:
        raise app.UsageError("--splits=split:work_dir_a:work_dir_b,... is required")
    if len(FLAGS.names) != 2:
        raise app.UsageError(f"--names takes two names, got {FLAGS.names}")
    rows, split_diffs, seed_diffs = [], {k: [] for k in KEYS}, {k: [] for k in KEYS}
    for triple in FLAGS.splits:
        split, dir_a, dir_b = triple.split(":")
        side_a, side_b = _seeds(dir_a), _seeds(dir_b)
        raw, init = _baselines(os.path.join(FLAGS.runs, dir_a.split("+")[0]))
        row = {"split": split, "seeds": (sorted(side_a), sorted(side_b)), "raw": raw,
               "init": init}
        for key in KEYS:
            (am, asd), (bm, bsd) = (stats([side[s][key] for s in sorted(side)])
                                    for side in (side_a, side_b))
            diff = am - bm
            row[key] = (am, asd, bm, bsd, diff, effect(diff, asd, bsd))
            split_diffs[key].append(diff)
            seed_diffs[key] += [side_a[s][key] - side_b[s][key] for s in side_a if s in side_b]
        row["epochs"] = tuple([side[s]["epochs"] for s in sorted(side)]
                              for side in (side_a, side_b))
        rows.append(row)

    a, b = FLAGS.names
    print(f"| split | seeds ({a} / {b}) | epochs ({a} / {b}) | raw pixels | "
          f"random init | {a} `features` | {b} `features` | {a} - {b} | an effect? "
          f"| {a} `embedding` | {b} `embedding` | {a} - {b} |")
    print("|---" * 12 + "|")
    for row in rows:
        f, e = row["features"], row["embedding"]
        print(f"| {row['split']} | {','.join(map(str, row['seeds'][0]))} / "
              f"{','.join(map(str, row['seeds'][1]))} | "
              f"{'/'.join(map(str, row['epochs'][0]))} / {'/'.join(map(str, row['epochs'][1]))} | "
              f"{row['raw']:.2f} | {row['init']:.2f} | {_fmt(f[0], f[1])} | {_fmt(f[2], f[3])} | "
              f"{f[4]:+.2f} | {f[5]} | {_fmt(e[0], e[1])} | {_fmt(e[2], e[3])} | {e[4]:+.2f} |")
    print()
    print(f"| pooled | {a} - {b}, `features` | {a} - {b}, `embedding` | n |")
    print("|---|---|---|---|")
    for name, diffs in (("per split (difference of seed means)", split_diffs),
                        ("per seed (seed s against seed s)", seed_diffs)):
        f, e = stats(diffs["features"]), stats(diffs["embedding"])
        print(f"| {name} | {_fmt(*f)} | {_fmt(*e)} | {len(diffs['features'])} |")
    first = [row["features"][0] for row in rows]
    print()
    print(f"{a[0].upper() + a[1:]} `features`, seed means per split: "
          + ", ".join(f"{v:.2f}" for v in first)
          + f"; all >= 55: {all(v >= 55 for v in first)}")


if __name__ == "__main__":
    app.run(main)
