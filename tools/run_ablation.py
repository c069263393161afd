r"""Runs a named ablation grid of the paper (Tables 2-5) or the issue's baseline set on
one dataset at one budget, evaluates every run with kNN (and optionally linear), and
writes paper-layout Markdown + JSON.

  python tools/run_ablation.py --grid=baselines --work_dir=runs/ablation \
      --gin_file=gin/cifar10_subset_npz.gin --epochs=10 --virtual_devices=2
  python tools/run_ablation.py --grid=table5 --work_dir=runs/t5 --epochs=50 --linear

Grids: baselines (full + prior + smoothing; no smoothing; no prior; no MLP head;
sampled 2^10; NPID), table2, table3 (full vs sampled 2^10..2^16), table4 (gaussian vs
prior at --table4_epochs), table5 (K, alpha). Every run is ``tools/train.py`` in
<work_dir>/<run>/: a finished run is not re-run, an interrupted one resumes from its
checkpoint. kNN top-1 is the run's last kNN-monitor value (k = 200, T = 0.07 on the
held-out split; the same numbers tools/eval_knn.py gives).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from tools import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("grid", "baselines", "baselines | table2 | table3 | table4 | table5")
flags.DEFINE_string("work_dir", None, "One sub-directory per run, plus the tables.")
flags.DEFINE_multi_string("gin_file", [os.path.join(ROOT, "gin", "cifar10_subset_npz.gin")],
                          "Base config of every run.")
flags.DEFINE_multi_string("gin_bindings", [], "Extra bindings for every run.")
flags.DEFINE_integer("epochs", 10, "Epochs of every run (the budget).", lower_bound=1)
flags.DEFINE_integer("batch_size", None, "Batch of every run (default: the gin file's).")
flags.DEFINE_integer("virtual_devices", 0, "Virtual CPU devices per run (0 = real ones).",
                     lower_bound=0)
flags.DEFINE_list("table4_epochs", ["2", "5", "10"], "table4: the epoch budgets.")
flags.DEFINE_bool("linear", False, "Also run tools/eval_linear.py on every run.")
flags.DEFINE_list("only", [], "Run only these run names of the grid.")

PAPER = {  # ImageNet, ResNet-50, 200 epochs, linear top-1 (DESIGN.md)
    "full_prior_smoothing": 68.2, "no_smoothing": 67.6, "no_prior": 67.3, "no_head": 58.6,
    "sampled_1024": 64.8, "sampled_4096": 65.3, "sampled_16384": 65.4, "sampled_65536": 65.5,
    "full": 67.3, "npid": 54.0, "npid_nce": 54.0,  # NPID: Table 6's InstDisc row (its own protocol)
    "k0_a0": 67.6, "k100_a0.1": 67.7, "k100_a0.2": 68.2, "k100_a0.3": 67.5, "k50_a0.2": 68.0,
    "k200_a0.2": 67.9,
}
NO_SMOOTHING = ["TrainConfig.smoothing = 0.0"]
GAUSSIAN = ["TrainConfig.init_mode = 'gaussian'"]
NPID_RECIPE = ["ModelConfig.method = 'npid'", "ModelConfig.use_head = False",
               "OptimConfig.base_learning_rate = 0.03", "OptimConfig.base_batch_size = 256",
               "OptimConfig.weight_decay = 5e-4"]


def grid(name: str) -> list[tuple[str, str, list[str], int | None]]:
    """(run name, description, bindings, epochs or None for --epochs)."""
    full = ("full_prior_smoothing", "full, prior + smoothing (K=100, a=0.2), the config's lr",
            [], None)
    table2 = [
        ("no_head", "no MLP head (linear), prior + smoothing",
         ["ModelConfig.use_head = False"], None),
        ("no_prior", "MLP head, smoothing, Gaussian W", GAUSSIAN, None),
        ("no_smoothing", "MLP head + prior, no smoothing", NO_SMOOTHING, None),
        full,
    ]
    if name == "table2":
        return table2
    if name == "baselines":
        return table2 + [
            ("sampled_1024", "sampled softmax, S = 2^10",
             NO_SMOOTHING + ["ModelConfig.method = 'sampled'", "ModelConfig.num_sampled = 1024"],
             None),
            ("npid", "NPID: memory bank, full non-parametric softmax (m = 0), t = 0.07, "
             "linear head, NPID's lr 0.03 / 256 and wd 5e-4",
             NO_SMOOTHING + GAUSSIAN + NPID_RECIPE + ["ModelConfig.npid_noise = 0"], None),
            ("npid_nce", "NPID with NCE: m = 4096 noise samples, Z estimated once",
             NO_SMOOTHING + GAUSSIAN + NPID_RECIPE + ["ModelConfig.npid_noise = 4096"], None),
            ("full_prior_smoothing_npid_lr", "as full_prior_smoothing, with NPID's optimiser "
             "(lr 0.03 / 256, wd 5e-4): same optimiser as the npid rows",
             ["OptimConfig.base_learning_rate = 0.03", "OptimConfig.base_batch_size = 256",
              "OptimConfig.weight_decay = 5e-4"], None),
        ]
    if name == "table3":
        runs = [(f"sampled_{2 ** p}", f"sampled softmax, S = 2^{p}",
                 NO_SMOOTHING + GAUSSIAN + ["ModelConfig.method = 'sampled'",
                                            f"ModelConfig.num_sampled = {2 ** p}"], None)
                for p in (10, 12, 14, 16)]
        return runs + [("full", "full softmax (no prior, no smoothing)", NO_SMOOTHING + GAUSSIAN,
                        None)]
    if name == "table4":
        return [(f"{mode}_{e}ep", f"{mode} W, {e} epochs",
                 NO_SMOOTHING + [f"TrainConfig.init_mode = '{mode}'"], int(e))
                for e in FLAGS.table4_epochs for mode in ("gaussian", "prior_running_bn")]
    if name == "table5":
        return [(f"k{k}_a{a:g}", f"K = {k}, alpha = {a:g}",
                 [f"TrainConfig.num_hard_negatives = {k}", f"TrainConfig.smoothing = {a}"], None)
                for k, a in ((0, 0.0), (100, 0.1), (100, 0.2), (100, 0.3), (50, 0.2),
                             (200, 0.2))]
    raise app.UsageError(f"unknown --grid {name!r}")



def run_one(name, bindings, epochs):
    model_dir = os.path.join(FLAGS.work_dir, name)
    result_path = os.path.join(model_dir, "ablation_result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            print(f"[{name}] done before: skipped", flush=True)
            return json.load(f)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), f"--model_dir={model_dir}",
           f"--virtual_devices={FLAGS.virtual_devices}", f"--epochs={epochs}"]
    cmd += [f"--gin_file={p}" for p in FLAGS.gin_file]
    if FLAGS.batch_size:
        cmd.append(f"--batch_size={FLAGS.batch_size}")
    cmd += [f"--gin_bindings={b}" for b in list(FLAGS.gin_bindings) + bindings]
    os.makedirs(model_dir, exist_ok=True)
    start = time.time()
    print(f"[{name}] training ({epochs} epochs) ...", flush=True)
    with open(os.path.join(model_dir, "ablation.log"), "a") as log:
        proc = subprocess.run(cmd, env=common.subprocess_env(), stdout=log, stderr=log, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"[{name}] training failed (rc {proc.returncode}); see "
                           f"{model_dir}/ablation.log")
    from tf_instcls.eval.analysis import read_metrics

    last = read_metrics(model_dir)[-1]
    result = {"name": name, "epochs": epochs, "bindings": bindings,
              "knn_top1": last.get("knn_top1"), "knn_top5": last.get("knn_top5"),
              "knn_top1_at_init": last.get("knn_top1_at_init"), "final_loss": last.get("loss"),
              "train_wall_s": round(time.time() - start, 1)}
    if FLAGS.linear:
        out = os.path.join(model_dir, "eval")
        lin = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval_linear.py"),
                              f"--model_dir={model_dir}", f"--out_dir={out}",
                              f"--virtual_devices={FLAGS.virtual_devices}"],
                             env=common.subprocess_env(), capture_output=True, text=True, cwd=ROOT)
        if lin.returncode != 0:
            raise RuntimeError(f"[{name}] linear evaluation failed: {lin.stderr[-2000:]}")
        with open(os.path.join(out, "linear.json")) as f:
            entry = json.load(f)["results"][0]
        result["linear_top1"], result["linear_top5"] = entry["top1"], entry["top5"]
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"[{name}] kNN top-1 {result['knn_top1']:.2f}% ({result['train_wall_s']} s)",
          flush=True)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.work_dir:
        raise app.UsageError("--work_dir is required")
    runs = grid(FLAGS.grid)
    names = [r[0] for r in runs]
    unknown = set(FLAGS.only) - set(names)
    if unknown:
        raise app.UsageError(f"--only: {sorted(unknown)} not in grid {FLAGS.grid}: {names}")
    results = []
    for name, description, bindings, epochs in runs:
        if FLAGS.only and name not in FLAGS.only:
            continue
        result = run_one(name, bindings, epochs or FLAGS.epochs)
        result["description"] = description
        result["paper"] = PAPER.get(name)
        results.append(result)
    headers = ["run", "setting", "epochs", "kNN top-1", "kNN top-5"]
    if FLAGS.linear:
        headers += ["linear top-1"]
    headers += ["paper (ImageNet, 200 ep, linear)"]
    rows = []
    for r in results:
        row = [r["name"], r["description"], r["epochs"], r["knn_top1"], r["knn_top5"]]
        if FLAGS.linear:
            row.append(r.get("linear_top1"))
        row.append("-" if r["paper"] is None else r["paper"])
        rows.append(row)
    from tf_instcls.eval.common import markdown_table

    md = (f"# Ablation grid `{FLAGS.grid}`\n\nconfig: {', '.join(FLAGS.gin_file)} "
          f"{' '.join(FLAGS.gin_bindings)}; {FLAGS.virtual_devices or 'real'} device(s)\n\n"
          + markdown_table(headers, rows))
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    base = os.path.join(FLAGS.work_dir, f"ablation_{FLAGS.grid}")
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {base}.md and {base}.json")


if __name__ == "__main__":
    app.run(main)
