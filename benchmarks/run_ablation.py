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

Every finished run is also scored by ``tools/eval_knn.py --feature=both`` (the backbone's
features and the head's embedding, k = 200, T = 0.07, on the run's held-out images).

``--grid=paper`` is the protocol of the paper's Tables 2-4 and the baselines, fixed before
any run (``paper_grid``, ``simclr_tuning``): the 4,068 / 1,017 split 0 of the CIFAR-10
subset for every training seed, 50 epochs, seeds 0-2, the linear probe on the Table 2
rows, and SimCLR's crop and temperature first chosen on split 1 (seed 0) among four
settings by the kNN of the backbone's features. It writes ``paper_tables.md`` / ``.png``
/ ``.json`` via ``paper_tables.py``:

  python benchmarks/run_ablation.py --grid=paper --work_dir=runs/paper --seeds=0,1,2 \
      --epochs=50
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
flags.DEFINE_string("grid", "baselines",
                    "baselines | table2 | table3 | table4 | table5 | paper")
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
    linear: bool = False  # also the linear probe (whatever --linear says)
    seeds: tuple | None = None  # None: --seeds


# The paper grid: every run holds out split 0 whatever its training seed; SimCLR's
# settings are first chosen on split 1 (seed 0) by the backbone features' kNN.
PAPER_SPLIT = "DataConfig.holdout_seed = 0"
SIMCLR_TUNING_SPLIT = "DataConfig.holdout_seed = 1"
SIMCLR_CHOICES = {  # name -> bindings, in this order (a tie goes to the first)
    f"simclr_tune_crop{c:g}_t{t:g}": [f"DataConfig.crop_scale = ({c}, 1.0)",
                                      f"SimCLRConfig.temperature = {t}"]
    for c in (0.08, 0.2) for t in (0.2, 0.5)}
PAPER_TABLE4_EPOCHS = (5, 20)


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
    if name == "paper":
        return paper_grid()
    if name == "table5":
        return [Run(f"k{k}_a{a:g}", f"K = {k}, alpha = {a:g}",
                    [f"FullConfig.num_hard_negatives = {k}", f"FullConfig.smoothing = {a}"])
                for k, a in ((0, 0.0), (100, 0.1), (100, 0.2), (100, 0.3), (50, 0.2),
                             (200, 0.2))]
    raise app.UsageError(f"unknown --grid {name!r}")


def simclr_tuning() -> list[Run]:
    """SimCLR's four candidate settings on split 1, seed 0 (the recipe's own values were
    chosen on these data last round; SimCLR gets the same chance, on another split)."""
    return [Run(name, "SimCLR tuning on split 1: " + ", ".join(b), [SIMCLR_TUNING_SPLIT, *b],
                gin_files=ablation("simclr"), seeds=(0,))
            for name, b in SIMCLR_CHOICES.items()]


def paper_grid(simclr_bindings: list | None = None) -> list[Run]:
    """The rows of the paper's Tables 2-4 and the two baselines, all on split 0. Table 2
    adds one component per row and each row is compared with the row before it;
    ``simclr_bindings`` are the tuning's choice (None: the simclr row is left out)."""
    def row(name, description, gin=(), bindings=(), reference=None, **kw):
        return Run(name, description, [PAPER_SPLIT, *bindings], gin_files=ablation(*gin),
                   reference=reference or name, **kw)  # no reference: is one

    runs = [
        row("linear_head", "no MLP head (one linear layer), Gaussian W, no smoothing",
            ("no_head", "no_prior", "no_smoothing"), linear=True),
        row("mlp", "MLP head, Gaussian W, no smoothing (= Table 3's full softmax)",
            ("no_prior", "no_smoothing"), linear=True, reference="linear_head"),
        row("mlp_prior", "MLP head + prior, no smoothing", ("no_smoothing",), linear=True,
            reference="mlp"),
        row("recipe", "MLP head + prior + smoothing (K=100, a=0.2): the shipped recipe",
            linear=True, reference="mlp_prior"),
        row("paper_optimizer", "the recipe with the paper's single optimiser for W (rows "
            "not unit-norm, W's lr x 1, W's decay 5e-4 as the backbone's)",
            bindings=("ClassifierConfig.unit_norm = False",
                      "OptimConfig.classifier_lr_scale = 1.0",
                      "OptimConfig.classifier_weight_decay = 5e-4"), reference="recipe"),
        row("sampled_1024", "sampled softmax, S = 2^10, Gaussian W, no smoothing",
            ("no_prior", "sampled"), reference="mlp"),
    ]
    for epochs in PAPER_TABLE4_EPOCHS:
        runs += [row(f"gaussian_{epochs}ep", f"Gaussian W, no smoothing, {epochs} epochs",
                     ("no_prior", "no_smoothing"), epochs=epochs),
                 row(f"prior_{epochs}ep", f"prior W, no smoothing, {epochs} epochs",
                     ("no_smoothing",), epochs=epochs, reference=f"gaussian_{epochs}ep")]
    runs.append(row("npid_nce", f"NPID with NCE (m = {_flag('npid_noise')}), gin/ablations/"
                    "npid.gin", ("npid",), (f"NPIDConfig.noise = {_flag('npid_noise')}",),
                    reference="recipe"))
    if simclr_bindings is not None:
        runs.append(row("simclr", "SimCLR, the tuning's choice: " + ", ".join(simclr_bindings),
                        ("simclr",), simclr_bindings, reference="recipe"))
    return runs


def simclr_choice(tuning_results: dict) -> tuple[str, list]:
    """(name, bindings) of the tuning run with the best backbone-feature kNN top-1."""
    best = max(SIMCLR_CHOICES, key=lambda n: (tuning_results[n]["knn_top1"],
                                              -list(SIMCLR_CHOICES).index(n)))
    return best, SIMCLR_CHOICES[best]


def effect(row: dict, reference: dict, key: str = "knn_top1") -> str:
    """'+d (effect)' or '+d (within spread)': the difference of mean kNN top-1 from the
    reference row, an effect only if it exceeds the larger of the two seed stds."""
    if row is reference:
        return "reference"
    if row.get(key) is None or reference.get(key) is None:
        return "-"
    diff = row[key] - reference[key]
    stds = [row[key + "_std"], reference[key + "_std"]]
    if None in stds:
        return f"{diff:+.2f} (1 seed: no call)"
    verdict = "effect" if abs(diff) > max(stds) else "within spread"
    return f"{diff:+.2f} ({verdict})"



def _tool(name: str, run_name: str, *args: str) -> None:
    """tools/<name>.py with ``args``; its output is kept in the run's log on failure."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), *args,
                           f"--virtual_devices={FLAGS.virtual_devices}"],
                          env=harness.subprocess_env(), capture_output=True, text=True,
                          cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"[{run_name}] {name} failed (rc {done.returncode}): "
                           f"{done.stderr[-2000:]}")


def run_one(run: Run, seed: int) -> dict:
    """Trains ``run`` with ``seed`` (resuming an interrupted training), scores it, and
    records the result; a recorded result is read back instead."""
    epochs = run.epochs or FLAGS.epochs
    model_dir = os.path.join(FLAGS.work_dir, run.name, f"seed{seed}")
    name = f"{run.name}/seed{seed}"
    result_path = os.path.join(model_dir, "ablation_result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            print(f"[{name}] done before: skipped", flush=True)
            return json.load(f)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), f"--model_dir={model_dir}",
           f"--virtual_devices={FLAGS.virtual_devices}", f"--epochs={epochs}",
           f"--dataset={FLAGS.dataset}",
           "--time_budget_minutes=0"]  # equal compute: fixed epochs, whatever the recipe
    cmd += [f"--gin_file={p}" for p in list(FLAGS.gin_file) + list(run.gin_files)]
    if FLAGS.batch_size:
        cmd.append(f"--batch_size={FLAGS.batch_size}")
    cmd += [f"--gin_bindings={b}" for b in list(FLAGS.gin_bindings) + run.bindings
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
    result = {"name": name, "seed": seed, "epochs": epochs, "bindings": run.bindings,
              "gin_files": list(run.gin_files),
              "monitor_knn_top1": last.get("knn_top1"),
              "knn_top1_at_init": last.get("knn_top1_at_init"), "final_loss": last.get("loss"),
              "train_wall_s": round(time.time() - start, 1)}
    out = os.path.join(model_dir, "eval")
    _tool("eval_knn", name, f"--model_dir={model_dir}", f"--out_dir={out}", "--feature=both")
    with open(os.path.join(out, "knn.json")) as f:
        knn = {r["representation"]: r for r in json.load(f)["results"]}
    result["knn_top1"], result["knn_top5"] = knn["features"]["top1"], knn["features"]["top5"]
    if "embedding" in knn:
        result["knn_embedding_top1"] = knn["embedding"]["top1"]
    if FLAGS.linear or run.linear:
        _tool("eval_linear", name, f"--model_dir={model_dir}", f"--out_dir={out}")
        with open(os.path.join(out, "linear.json")) as f:
            entry = json.load(f)["results"][0]
        result["linear_top1"], result["linear_top5"] = entry["top1"], entry["top5"]
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"[{name}] kNN top-1 {result['knn_top1']:.2f}% ({result['train_wall_s']} s)",
          flush=True)
    return result


METRICS = ("knn_top1", "knn_top5", "knn_embedding_top1", "linear_top1", "train_wall_s")


def run_rows(runs: list[Run], seeds: list[int], first: str | None = None) -> list[dict]:
    """Every run of ``runs`` once per seed, aggregated per run (mean +- sample std); a
    run without a reference is compared with ``first`` (None: the first of ``runs``)."""
    results = []
    for run in runs:
        run_seeds = list(run.seeds or seeds)
        per_seed = [run_one(run, seed) for seed in run_seeds]
        result = {"name": run.name, "description": run.description,
                  "epochs": run.epochs or FLAGS.epochs, "seeds": run_seeds,
                  "reference": run.reference or first or runs[0].name, "paper": PAPER.get(run.name),
                  "per_seed": per_seed}
        for key in METRICS:
            result[key], result[key + "_std"] = spread([r.get(key) for r in per_seed])
        results.append(result)
    by_name = {r["name"]: r for r in results}
    for r in results:
        reference = by_name.get(r["reference"])
        for key in ("knn_top1", "knn_embedding_top1", "linear_top1"):
            r[f"vs_reference_{key}"] = effect(r, reference, key) if reference else "-"
        r["vs_reference"] = r["vs_reference_knn_top1"]
    return results


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
    tuning, choice = [], None
    if FLAGS.grid == "paper":  # SimCLR's settings first, on split 1
        tuning = run_rows(simclr_tuning(), seeds)
        choice, bindings = simclr_choice({r["name"]: r for r in tuning})
        print(f"SimCLR: {choice} has the best backbone kNN on split 1", flush=True)
        runs = paper_grid(bindings)
    names = [r.name for r in runs]
    unknown = set(FLAGS.only) - set(names)
    if unknown:
        raise app.UsageError(f"--only: {sorted(unknown)} not in grid {FLAGS.grid}: {names}")
    results = run_rows([r for r in runs if not FLAGS.only or r.name in FLAGS.only], seeds,
                       first=names[0])
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    if FLAGS.grid == "paper":
        import paper_tables

        paper_tables.write(FLAGS.work_dir, results, tuning, choice)

    def with_std(r, key):
        mean, std = r[key], r[key + "_std"]
        if mean is None:
            return "-"
        return f"{mean:.2f}" + ("" if std is None else f" +- {std:.2f}")

    linear = any(r["linear_top1"] is not None for r in results)
    headers = ["run", "setting", "epochs", "kNN top-1", "kNN top-5", "kNN top-1 (embedding)"]
    if linear:
        headers += ["linear top-1"]
    headers += ["vs reference (top-1)", "train s", "paper (ImageNet, 200 ep, linear)"]
    rows = []
    for r in results:
        row = [r["name"], r["description"], r["epochs"], with_std(r, "knn_top1"),
               with_std(r, "knn_top5"), with_std(r, "knn_embedding_top1")]
        if linear:
            row.append(with_std(r, "linear_top1"))
        row += [r["vs_reference"],
                "-" if r["train_wall_s"] is None else f"{r['train_wall_s']:.0f}",
                "-" if r["paper"] is None else r["paper"]]
        rows.append(row)
    from tf_instcls.eval.tables import markdown_table

    md = (f"# Ablation grid `{FLAGS.grid}`\n\nconfig: {', '.join(FLAGS.gin_file)} "
          f"{' '.join(FLAGS.gin_bindings)}; {FLAGS.virtual_devices or 'real'} device(s); "
          f"seeds {','.join(map(str, seeds))} (mean +- sample std). A difference from the "
          "reference row is an effect only when it exceeds the larger of the two stds.\n\n"
          + markdown_table(headers, rows))
    base = os.path.join(FLAGS.work_dir, f"ablation_{FLAGS.grid}")
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {base}.md and {base}.json")


if __name__ == "__main__":
    app.run(main)
