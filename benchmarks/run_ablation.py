r"""Runs a named ablation grid of the paper (Tables 2-5) or the issue's baseline set on
one dataset at one budget, evaluates every run with kNN (and optionally linear), and
writes paper-layout Markdown + JSON.

  python benchmarks/run_ablation.py --grid=baselines --work_dir=runs/ablation \
      --gin_file=gin/cifar10_subset_npz.gin --epochs=10 --virtual_devices=2
  python benchmarks/run_ablation.py --grid=table5 --work_dir=runs/t5 --epochs=50 --linear

Grids: baselines (full + prior + smoothing; no smoothing; no prior; no MLP head;
sampled 2^10; NPID full softmax; NPID NCE; SimCLR), table2, table3 (full vs sampled
2^10..2^16), table4 (gaussian vs prior at --table4_epochs), table5 (K, alpha). Every run
is ``tools/train.py`` in <work_dir>/<run>/seed<s>/: a finished run is not re-run, an
interrupted one resumes from its checkpoint. kNN top-1 is the run's last kNN-monitor
value (k = 200, T = 0.07 on the held-out split; the same numbers tools/eval_knn.py
gives).

With ``--seeds=0,1,2`` every run is trained once per seed (``TrainConfig.seed``, in
<work_dir>/<run>/seed<s>/) and a row reports mean +- sample std (ddof 1) over the
seeds. Each row is compared with its reference row (the grid's first row; in table4 the
Gaussian run of the same budget): the difference of means is called an **effect** only
when it exceeds the seed-to-seed spread, i.e. the larger of the two rows' stds; with one
seed no effect is called.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import NamedTuple

from absl import app, flags

import harness
from harness import spread

ROOT = harness.ROOT
FLAGS = flags.FLAGS
flags.DEFINE_string("grid", "baselines", "baselines | table2 | table3 | table4 | table5")
flags.DEFINE_string("work_dir", None, "One sub-directory per run, plus the tables.")
flags.DEFINE_multi_string("gin_file", [os.path.join(harness.GIN_DIR, "cifar10_subset_npz.gin")],
                          "Base config of every run.")
flags.DEFINE_multi_string("gin_bindings", [], "Extra bindings for every run.")
flags.DEFINE_string("dataset", f"npz:{harness.CIFAR_SUBSET}", "--dataset of every run.")
flags.DEFINE_integer("epochs", 10, "Epochs of every run (the budget).", lower_bound=1)
flags.DEFINE_integer("batch_size", None, "Batch of every run (default: the gin file's).")
flags.DEFINE_integer("virtual_devices", 0, "Virtual CPU devices per run (0 = real ones).",
                     lower_bound=0)
flags.DEFINE_list("table4_epochs", ["2", "5", "10"], "table4: the epoch budgets.")
flags.DEFINE_bool("linear", False, "Also run tools/eval_linear.py on every run.")
flags.DEFINE_list("only", [], "Run only these run names of the grid.")
flags.DEFINE_list("seeds", ["0"], "Training seeds: every run once per seed (mean +- std).")
flags.DEFINE_integer("npid_noise", 400, "m of the npid_nce row (< N; NPID used 4096 with "
                     "N = 50k-1.28M; 400 keeps m / N near NPID's on a 4k-image set).",
                     lower_bound=1)

PAPER = {  # ImageNet, ResNet-50, 200 epochs, linear top-1 (DESIGN.md)
    "full_prior_smoothing": 68.2, "no_smoothing": 67.6, "no_prior": 67.3, "no_head": 58.6,
    "sampled_1024": 64.8, "sampled_4096": 65.3, "sampled_16384": 65.4, "sampled_65536": 65.5,
    "full": 67.3, "npid": 54.0, "npid_nce": 54.0,  # NPID: Table 6's InstDisc row (its own protocol)
    "k0_a0": 67.6, "k100_a0.1": 67.7, "k100_a0.2": 68.2, "k100_a0.3": 67.5, "k50_a0.2": 68.0,
    "k200_a0.2": 67.9,
}


def ablation(*names: str) -> tuple:
    """gin/ablations/<name>.gin for each name: the rows are built from these files, so a
    grid and a user's `--gin_file=gin/ablations/X.gin` run the same thing."""
    return tuple(os.path.join(harness.GIN_DIR, "ablations", f"{name}.gin") for name in names)


def _flag(name: str):
    """A flag's value (its default when flags are not parsed: grids read in tests)."""
    return FLAGS[name].value if FLAGS.is_parsed() else FLAGS[name].default


class Run(NamedTuple):
    name: str
    description: str
    bindings: list
    epochs: int | None = None  # None: --epochs
    gin_files: tuple = ()  # layered after --gin_file (a method's own recipe)
    reference: str | None = None  # the row it is compared with (None: the first row)


def grid(name: str, table4_epochs: list | None = None) -> list[Run]:
    """The runs of a grid, each a :class:`Run` (table4's budgets: --table4_epochs)."""
    full = Run("full_prior_smoothing",
               "full, prior + smoothing (K=100, a=0.2): the config's recipe", [])
    table2 = [
        full,
        Run("no_head", "no MLP head (linear), prior + smoothing", [],
            gin_files=ablation("no_head")),
        Run("no_prior", "MLP head, smoothing, Gaussian W", [], gin_files=ablation("no_prior")),
        Run("no_smoothing", "MLP head + prior, no smoothing", [],
            gin_files=ablation("no_smoothing")),
    ]
    if name == "table2":
        return table2
    if name == "baselines":
        return table2 + [
            Run("sampled_1024", "sampled softmax, S = 2^10 (gin/ablations/sampled.gin)", [],
                gin_files=ablation("sampled")),
            Run("npid", "NPID: memory bank, full non-parametric softmax (m = 0), t = 0.07, "
                "linear head, NPID's lr 0.03 / 256 and wd 5e-4 (gin/ablations/npid.gin)",
                ["NPIDConfig.noise = 0"], gin_files=ablation("npid")),
            Run("npid_nce", f"NPID with NCE: m = {_flag('npid_noise')} noise samples, "
                "npid.gin's Z estimate", [f"NPIDConfig.noise = {_flag('npid_noise')}"],
                gin_files=ablation("npid")),
            Run("simclr", "SimCLR: NT-Xent over the 2B views, no W (gin/ablations/simclr.gin)",
                [], gin_files=ablation("simclr")),
        ]
    if name == "table3":
        runs = [Run(f"sampled_{2 ** p}", f"sampled softmax, S = 2^{p}",
                    [f"SampledConfig.num_sampled = {2 ** p}"],
                    gin_files=ablation("no_prior", "sampled"), reference="full")
                for p in (10, 12, 14, 16)]
        return [Run("full", "full softmax (no prior, no smoothing)", [],
                    gin_files=ablation("no_prior", "no_smoothing")), *runs]
    if name == "table4":
        return [Run(f"{mode}_{e}ep", f"{mode} W, {e} epochs",
                    [f"ClassifierConfig.init_mode = '{mode}'"], int(e),
                    gin_files=ablation("no_smoothing"), reference=f"gaussian_{e}ep")
                for e in (table4_epochs or _flag("table4_epochs"))
                for mode in ("gaussian", "prior_running_bn")]
    if name == "table5":
        return [Run(f"k{k}_a{a:g}", f"K = {k}, alpha = {a:g}",
                    [f"FullConfig.num_hard_negatives = {k}", f"FullConfig.smoothing = {a}"])
                for k, a in ((0, 0.0), (100, 0.1), (100, 0.2), (100, 0.3), (50, 0.2),
                             (200, 0.2))]
    raise app.UsageError(f"unknown --grid {name!r}")


def effect(row: dict, reference: dict) -> str:
    """'+d (effect)' or '+d (within spread)': the difference of mean kNN top-1 from the
    reference row, an effect only if it exceeds the larger of the two seed stds."""
    if row is reference:
        return "reference"
    if row["knn_top1"] is None or reference["knn_top1"] is None:
        return "-"
    diff = row["knn_top1"] - reference["knn_top1"]
    stds = [row["knn_top1_std"], reference["knn_top1_std"]]
    if None in stds:
        return f"{diff:+.2f} (1 seed: no call)"
    verdict = "effect" if abs(diff) > max(stds) else "within spread"
    return f"{diff:+.2f} ({verdict})"



def run_one(name, bindings, epochs, gin_files=(), seed=0):
    model_dir = os.path.join(FLAGS.work_dir, name, f"seed{seed}")
    name = f"{name}/seed{seed}"
    result_path = os.path.join(model_dir, "ablation_result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            print(f"[{name}] done before: skipped", flush=True)
            return json.load(f)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), f"--model_dir={model_dir}",
           f"--virtual_devices={FLAGS.virtual_devices}", f"--epochs={epochs}",
           f"--dataset={FLAGS.dataset}",
           "--time_budget_minutes=0"]  # equal compute: fixed epochs, whatever the recipe
    cmd += [f"--gin_file={p}" for p in list(FLAGS.gin_file) + list(gin_files)]
    if FLAGS.batch_size:
        cmd.append(f"--batch_size={FLAGS.batch_size}")
    cmd += [f"--gin_bindings={b}" for b in list(FLAGS.gin_bindings) + bindings
            + [f"TrainConfig.seed = {seed}"]]
    os.makedirs(model_dir, exist_ok=True)
    start = time.time()
    print(f"[{name}] training ({epochs} epochs) ...", flush=True)
    with open(os.path.join(model_dir, "ablation.log"), "a") as log:
        proc = subprocess.run(cmd, env=harness.subprocess_env(), stdout=log, stderr=log, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"[{name}] training failed (rc {proc.returncode}); see "
                           f"{model_dir}/ablation.log")
    from tf_instcls.eval.analysis import read_metrics

    last = read_metrics(model_dir)[-1]
    result = {"name": name, "seed": seed, "epochs": epochs, "bindings": bindings,
              "gin_files": list(gin_files),
              "knn_top1": last.get("knn_top1"), "knn_top5": last.get("knn_top5"),
              "knn_top1_at_init": last.get("knn_top1_at_init"), "final_loss": last.get("loss"),
              "train_wall_s": round(time.time() - start, 1)}
    if FLAGS.linear:
        out = os.path.join(model_dir, "eval")
        lin = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval_linear.py"),
                              f"--model_dir={model_dir}", f"--out_dir={out}",
                              f"--virtual_devices={FLAGS.virtual_devices}"],
                             env=harness.subprocess_env(), capture_output=True, text=True, cwd=ROOT)
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
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        raise app.UsageError(f"--seeds must be integers, e.g. 0,1,2; got {FLAGS.seeds}") \
            from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise app.UsageError(f"--seeds must be distinct and at least one; got {FLAGS.seeds}")
    runs = grid(FLAGS.grid)
    names = [r.name for r in runs]
    unknown = set(FLAGS.only) - set(names)
    if unknown:
        raise app.UsageError(f"--only: {sorted(unknown)} not in grid {FLAGS.grid}: {names}")
    results = []
    for run in runs:
        if FLAGS.only and run.name not in FLAGS.only:
            continue
        per_seed = [run_one(run.name, run.bindings, run.epochs or FLAGS.epochs, run.gin_files,
                            seed) for seed in seeds]
        result = {"name": run.name, "description": run.description,
                  "epochs": run.epochs or FLAGS.epochs, "seeds": seeds,
                  "reference": run.reference or names[0], "paper": PAPER.get(run.name),
                  "per_seed": per_seed}
        for key in ("knn_top1", "knn_top5", "linear_top1", "train_wall_s"):
            result[key], result[key + "_std"] = spread([r.get(key) for r in per_seed])
        results.append(result)
    by_name = {r["name"]: r for r in results}
    for r in results:
        reference = by_name.get(r["reference"])
        r["vs_reference"] = effect(r, reference) if reference else "-"

    def with_std(r, key):
        mean, std = r[key], r[key + "_std"]
        if mean is None:
            return "-"
        return f"{mean:.2f}" + ("" if std is None else f" +- {std:.2f}")

    headers = ["run", "setting", "epochs", "kNN top-1", "kNN top-5"]
    if FLAGS.linear:
        headers += ["linear top-1"]
    headers += ["vs reference (top-1)", "train s", "paper (ImageNet, 200 ep, linear)"]
    rows = []
    for r in results:
        row = [r["name"], r["description"], r["epochs"], with_std(r, "knn_top1"),
               with_std(r, "knn_top5")]
        if FLAGS.linear:
            row.append(with_std(r, "linear_top1"))
        row += [r["vs_reference"], f"{r['train_wall_s']:.0f}",
                "-" if r["paper"] is None else r["paper"]]
        rows.append(row)
    from tf_instcls.eval.tables import markdown_table

    md = (f"# Ablation grid `{FLAGS.grid}`\n\nconfig: {', '.join(FLAGS.gin_file)} "
          f"{' '.join(FLAGS.gin_bindings)}; {FLAGS.virtual_devices or 'real'} device(s); "
          f"seeds {','.join(map(str, seeds))} (mean +- sample std). A difference from the "
          "reference row is an effect only when it exceeds the larger of the two stds.\n\n"
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
