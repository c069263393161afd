"""Issue 14, item 3: the recipe against SimCLR in same-conditions pairs (the fifth rule of
rules.md). Each pair is one run of each method on one split, adjacent in time on the same
frozen code, so the machine's speed on the day is shared by both sides; the paired
difference d = a - b is what is judged, not the difference of seed means from runs of
different days.

    python results/issue14/split_probes/pairs.py --runs=/work/runs \
        --pairs=1:r24s1_t015_budget28:2:r24s1_simclr_budget28:2,...

Per pair: weighted-kNN top-1 of the export's ``features`` and ``embedding`` for both sides,
epochs and median epoch seconds, and d. Then the fifth rule on ``features``: "above under
the same conditions" only if every d > 0 and mean(d) > std(d) (sample std, n >= 2).
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "full30"))
from summarize import finished_seeds, stats  # noqa: E402  (results/issue14/full30; defines --runs)

flags.DEFINE_list("pairs", [], "split:work_dir_a:seed_a:work_dir_b:seed_b entries, one per pair.")
flags.DEFINE_list("names", ["recipe", "SimCLR"], "What sides a and b are called.")
FLAGS = flags.FLAGS

KEYS = ("features", "embedding")


def _row(work, seed):
    return finished_seeds(os.path.join(FLAGS.runs, work), [seed])[seed]


def rule(diffs):
    """The fifth rule: every difference positive and their mean above their sample std."""
    mean, std = stats(diffs)  # std is nan for one pair, and nan > anything is False
    return all(d > 0 for d in diffs) and mean > std


def main(argv):
    del argv
    if not FLAGS.pairs:
        raise app.UsageError("--pairs=split:work_dir_a:seed_a:work_dir_b:seed_b,... is required")
    a, b = FLAGS.names
    print(f"| split | {a} (seed) | {b} (seed) | {a} `features` | {b} `features` | d `features` "
          f"| {a} `embedding` | {b} `embedding` | d `embedding` | epochs {a} / {b} "
          f"| median epoch s {a} / {b} |")
    print("|---" * 11 + "|")
    diffs = {k: [] for k in KEYS}
    for entry in FLAGS.pairs:
        split, work_a, seed_a, work_b, seed_b = entry.split(":")
        ra, rb = _row(work_a, int(seed_a)), _row(work_b, int(seed_b))
        for key in KEYS:
            diffs[key].append(ra[key] - rb[key])
        print(f"| {split} | {work_a} ({seed_a}) | {work_b} ({seed_b}) | {ra['features']:.2f} "
              f"| {rb['features']:.2f} | {diffs['features'][-1]:+.2f} | {ra['embedding']:.2f} "
              f"| {rb['embedding']:.2f} | {diffs['embedding'][-1]:+.2f} "
              f"| {ra['epochs']} / {rb['epochs']} "
              f"| {ra['median_epoch_s']:.2f} / {rb['median_epoch_s']:.2f} |")
    print()
    print(f"| pooled over {len(FLAGS.pairs)} pairs | mean d | std d | every d > 0 | mean > std "
          "(the fifth rule) |")
    print("|---|---|---|---|---|")
    for key in KEYS:
        mean, std = stats(diffs[key])
        print(f"| `{key}` | {mean:+.2f} | {std:.2f} | {all(d > 0 for d in diffs[key])} "
              f"| {rule(diffs[key])} |")


if __name__ == "__main__":
    app.run(main)
