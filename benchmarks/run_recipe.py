r"""The issue-14 protocol, end to end, for one recipe and several seeds:

1. split a labelled npz into a class-stratified 80 / 20 train / holdout (the split seed
   is fixed, so every recipe and seed sees the same images), and write the train part
   WITHOUT labels, as a user's unlabelled folder would be;
2. ``tools/train.py --gin_file=RECIPE --dataset=npz:<unlabelled train> --model_dir=...``
   (its wall time is recorded), then ``tools/export.py --model_dir=...``;
3. weighted kNN (k = 200, tau = 0.07) of the export's ``features`` and ``embedding``:
   the train images are the bank (their labels used only here), the holdout the queries.

  python benchmarks/run_recipe.py --work_dir=runs/recipe --seeds=0,1,2 \
      --data=../shared/data/cifar10_subset_train.npz --gin_file=gin/cifar10_subset_npz.gin
  python benchmarks/run_recipe.py --work_dir=runs/recipe_simclr --seeds=0 \
      --gin_file=gin/cifar10_subset_npz.gin --gin_file=gin/ablations/simclr.gin

Writes <work_dir>/recipe.json (one row per seed, plus mean and sample std) and recipe.md.
A finished seed is not rerun. Run nothing else heavy beside it: wall time is a result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

import harness

ROOT = harness.ROOT
FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", None, "Split, one model_dir per seed, and the results.")
flags.DEFINE_string("data", os.path.join(ROOT, "..", "shared", "data",
                                         "cifar10_subset_train.npz"),
                    "Labelled npz (x uint8 [n, h, w, 3], y) to split.")
flags.DEFINE_float("holdout_fraction", 0.2, "Class-stratified held-out fraction.")
flags.DEFINE_integer("split_seed", 0, "Seed of the split (the same for every recipe).")
flags.DEFINE_multi_string("gin_file", [os.path.join(harness.GIN_DIR, "cifar10_subset_npz.gin")],
                          "The recipe (repeatable, layered).")
flags.DEFINE_multi_string("gin_bindings", [], "Extra bindings.")
flags.DEFINE_list("seeds", ["0"], "Training seeds (TrainConfig.seed).")
flags.DEFINE_integer("virtual_devices", 0, "Passed to train.py (0: the real devices).")


def write_split(work_dir: str) -> dict:
    """The three npz files of the protocol (written once)."""
    from tf_instcls import data as data_lib

    paths = {name: os.path.join(work_dir, f"{name}.npz")
             for name in ("train_unlabelled", "train_labelled", "holdout")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    source = data_lib.load_source(f"npz:{FLAGS.data}")
    if source.labels is None:
        raise app.UsageError(f"--data={FLAGS.data} has no labels (y): nothing to score")
    train, holdout = data_lib.split_holdout(source, FLAGS.holdout_fraction, FLAGS.split_seed)
    np.savez(paths["train_unlabelled"], x=train.images)
    np.savez(paths["train_labelled"], x=train.images, y=train.labels)
    np.savez(paths["holdout"], x=holdout.images, y=holdout.labels)
    return paths


def _run(cmd: list[str], log_path: str) -> float:
    start = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                              env=harness.subprocess_env())
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}); see {log_path}")
    return time.perf_counter() - start


def run_seed(paths: dict, seed: int) -> dict:
    from tf_instcls.eval.analysis import read_metrics
    from tf_instcls.eval.restore import read_run_info

    model_dir = os.path.join(FLAGS.work_dir, f"seed{seed}")
    result_path = os.path.join(model_dir, "recipe_result.json")
    if os.path.exists(result_path):
        print(f"seed {seed}: done before, skipped")
        with open(result_path) as f:
            return json.load(f)
    os.makedirs(model_dir, exist_ok=True)
    py = sys.executable
    train_cmd = [py, os.path.join(ROOT, "tools", "train.py"),
                 *[f"--gin_file={g}" for g in FLAGS.gin_file],
                 *[f"--gin_bindings={b}" for b in FLAGS.gin_bindings],
                 f"--gin_bindings=TrainConfig.seed = {seed}",
                 f"--dataset=npz:{paths['train_unlabelled']}", f"--model_dir={model_dir}",
                 f"--virtual_devices={FLAGS.virtual_devices}"]
    train_s = _run(train_cmd, os.path.join(model_dir, "train.log"))
    export_dir = os.path.join(model_dir, "export")
    export_s = _run([py, os.path.join(ROOT, "tools", "export.py"), f"--model_dir={model_dir}",
                     f"--export_dir={export_dir}", "--overwrite"],
                    os.path.join(model_dir, "export.log"))
    knn_dir = os.path.join(model_dir, "knn")
    _run([py, os.path.join(ROOT, "tools", "eval_knn.py"), f"--export_dir={export_dir}",
          f"--dataset=npz:{paths['train_labelled']}",
          f"--eval_dataset=npz:{paths['holdout']}", f"--out_dir={knn_dir}",
          "--feature=both", "--baselines", "--cache_features=false"],
         os.path.join(model_dir, "knn.log"))
    with open(os.path.join(knn_dir, "knn.json")) as f:
        knn = json.load(f)
    records = read_metrics(model_dir)
    train_seconds = sum(r.get("train_seconds", 0.0) for r in records)
    images = records[-1]["step"] * int(read_run_info(model_dir)["batch_size"])
    result = {"seed": seed, "train_wall_s": train_s, "export_wall_s": export_s,
              "epochs": len(records), "epoch_loop_s": train_seconds,
              "instances_per_s": images / max(train_seconds, 1e-9),
              "final_loss": records[-1].get("loss"), "knn": knn}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def _find(knn: dict, kind: str, representation: str) -> float | None:
    """top-1 of one row of eval_knn's knn.json; kind: trained | random | pixels."""
    for entry in knn.get("results", []):
        model = str(entry.get("model", ""))
        found = ("pixels" if model == "raw pixels" else
                 "random" if model.endswith("(random init)") else "trained")
        if found == kind and entry.get("representation") == representation:
            return entry.get("top1")
    return None


def summarise(results: list[dict]) -> dict:
    columns = {"features": ("trained", "features"), "embedding": ("trained", "embedding"),
               "random_init": ("random", "features"), "raw_pixels": ("pixels", "pixels")}
    summary = {}
    for name, (kind, representation) in columns.items():
        values = [_find(r["knn"], kind, representation) for r in results]
        values = [v for v in values if v is not None]
        if values:
            mean, std = harness.spread(values)  # sample std: the seed-to-seed spread
            summary[name] = {"mean": mean, "std": std, "values": values}  # None: one seed
    walls = [r["train_wall_s"] for r in results]
    # no std: wall times are comparable only between unloaded runs (say which were)
    summary["train_wall_s"] = {"mean": float(np.mean(walls)), "std": None, "values": walls}
    summary["instances_per_s"] = float(np.mean([r["instances_per_s"] for r in results]))
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.work_dir:
        raise app.UsageError("--work_dir is required")
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    paths = write_split(FLAGS.work_dir)
    results = [run_seed(paths, int(s)) for s in FLAGS.seeds]
    summary = summarise(results)
    record = {"gin_file": FLAGS.gin_file, "gin_bindings": FLAGS.gin_bindings,
              "data": FLAGS.data, "holdout_fraction": FLAGS.holdout_fraction,
              "split_seed": FLAGS.split_seed, "seeds": [r["seed"] for r in results],
              "summary": summary, "runs": results}
    with open(os.path.join(FLAGS.work_dir, "recipe.json"), "w") as f:
        json.dump(record, f, indent=1)
    lines = ["| metric | mean | std | per seed |", "|---|---|---|---|"]
    for key, value in summary.items():
        if isinstance(value, dict) and "values" in value:
            per = ", ".join(f"{v:.2f}" for v in value["values"])
            std = "-" if value.get("std") is None else f"{value['std']:.2f}"
            lines.append(f"| {key} | {value['mean']:.2f} | {std} | {per} |")
    text = "\n".join(lines)
    with open(os.path.join(FLAGS.work_dir, "recipe.md"), "w") as f:
        f.write(f"# {' + '.join(FLAGS.gin_file)}\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    app.run(main)
