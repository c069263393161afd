r"""Proof that a refactoring changed no behaviour: the same deterministic runs, trained by
two copies of the code, must log bit-identical per-step losses.

  git worktree add /tmp/before <commit before the change>
  python benchmarks/check_unchanged.py --code_dirs=/tmp/before,. --json=runs/unchanged.json

Each case is a short ``tools/train.py`` run with ``TrainConfig.deterministic`` and
``TrainConfig.log_steps`` (steps.jsonl: loss and instance accuracy of every step; the
kNN monitor's top-1 / top-5 of every evaluated epoch from metrics.jsonl), run once with
each code directory first on PYTHONPATH. Cases (``--cases``):

- ``digits``: the README's main job (gin/digits.gin), 3 epochs, 2 virtual devices;
- ``cifar_eq3``: the CIFAR subset recipe (gin/cifar10_subset_npz.gin), 2 epochs, W
  sharded over 4 virtual devices, Eq. 3 (K = 100, mined every epoch);
- ``padded_eq3``: 1,026 synthetic images on 4 virtual devices (W padded to 1,028 rows),
  gin/scale_synthetic.gin's Eq. 3, 2 epochs;
- ``npid``: NPID with NCE on digits (gin/ablations/npid.gin), 2 epochs;
- ``sampled``: sampled instance classification on digits (gin/ablations/sampled.gin);
- ``simclr``: SimCLR on digits (gin/ablations/simclr.gin);
- ``eval_tools``: one digits run (2 epochs, 2 virtual devices), then ``eval_knn``
  (``--baselines --grid``), ``eval_linear`` (``--baselines``, 10 epochs) and ``finetune``
  (``--baselines``, 10% labels, 2 epochs) on it under each checkout: every reported
  top-1 / top-5 compared (the evaluators and their runner).

Exits non-zero when any step's loss or accuracy, or any evaluation result, differs in
any bit, or a run fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl import app, flags

import harness
from harness import ROOT

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10_subset_train.npz")

FLAGS = flags.FLAGS
flags.DEFINE_list("code_dirs", None, "Two checkouts to compare: BEFORE,AFTER.")
flags.DEFINE_list("cases", ["digits", "cifar_eq3", "padded_eq3", "npid", "sampled", "simclr",
                            "eval_tools"],
                  "Which runs to compare.")
flags.DEFINE_string("cifar", SHARED, "The CIFAR-10 subset npz of the cifar_eq3 case.")
flags.DEFINE_string("json", None, "Write the comparison here.")
flags.DEFINE_string("work_dir", None, "Keep the runs here (default: a temporary dir).")


def _cases() -> dict:
    digits = ["--gin_file=gin/digits.gin", "--virtual_devices=2"]
    return {
        "digits": digits + ["--epochs=3"],
        "cifar_eq3": ["--gin_file=gin/cifar10_subset_npz.gin", f"--dataset=npz:{FLAGS.cifar}",
                      "--virtual_devices=4", "--epochs=2",
                      "--gin_bindings=MonitorConfig.every_epochs = 0"],
        "padded_eq3": ["--gin_file=gin/scale_synthetic.gin", "--dataset=synthetic:1026:16",
                       "--virtual_devices=4", "--epochs=2",
                       "--gin_bindings=TrainConfig.batch_size = 64"],
        "npid": digits + ["--gin_file=gin/ablations/npid.gin", "--epochs=2",
                          "--gin_bindings=NPIDConfig.noise = 400"],
        "sampled": digits + ["--gin_file=gin/ablations/sampled.gin", "--epochs=2",
                             "--gin_bindings=SampledConfig.num_sampled = 256"],
        "simclr": digits + ["--gin_file=gin/ablations/simclr.gin", "--epochs=2"],
    }


EVAL_TOOLS = {  # tool -> (its flags, its report)
    "eval_knn": (["--baselines", "--grid", "--grid_k=20,200", "--grid_temperature=0.07,0.1"],
                 "knn.json"),
    "eval_linear": (["--baselines", "--epochs=10"], "linear.json"),
    "finetune": (["--baselines", "--epochs=2", "--label_fraction=0.1",
                  "--finetune_batch_size=64"], "finetune_0.1.json"),
}


def _eval_tools(dirs: list, work: str) -> dict:
    """The ``eval_tools`` case: the evaluation tools of both checkouts on one run."""
    model_dir = os.path.join(work, "eval_tools", "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    _run(dirs[1], ["--gin_file=gin/digits.gin", "--virtual_devices=2", "--epochs=2"],
         model_dir)
    out = {}
    for tool, (flags_, report) in EVAL_TOOLS.items():
        rows = []
        for tag, code_dir in zip(("before", "after"), dirs):
            out_dir = os.path.join(work, "eval_tools", tag, tool)
            shutil.rmtree(out_dir, ignore_errors=True)
            env = harness.subprocess_env(code_dir)
            cmd = [sys.executable, os.path.join(code_dir, "tools", f"{tool}.py"),
                   f"--model_dir={model_dir}", f"--out_dir={out_dir}", "--virtual_devices=2",
                   *flags_]
            done = subprocess.run(cmd, cwd=code_dir, env=env, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
            with open(os.path.join(out_dir, report)) as f:
                record = json.load(f)
            rows.append([[r.get("model"), r["top1"], r["top5"]] for r in record["results"]])
        differing = [b for b, a in zip(*rows) if b != a]
        out[tool] = {"results": rows[0], "results_after": rows[1],
                     "identical": rows[0] == rows[1], "differing": differing}
    return out


def _for_checkout(code_dir: str, args: list) -> list:
    """``args`` in the binding names of ``code_dir``: a binding whose config class that
    checkout does not define (it predates a rename) gets its old name back, from
    ``training.config.RENAMED``."""
    import glob
    import re

    from tf_instcls.training.config import RENAMED

    sources = "".join(open(p).read() for p in glob.glob(
        os.path.join(code_dir, "tf_instcls", "**", "*.py"), recursive=True))
    defined = set(re.findall(r"^class (\w+)", sources, re.MULTILINE))

    def known(name):
        return name.split(".")[0] in defined

    out = []
    for arg in args:
        if arg.startswith("--gin_bindings="):
            name, _, value = arg[len("--gin_bindings="):].partition("=")
            name = name.strip()
            if not known(name):
                older = [old for old, new in RENAMED.items() if new == name and known(old)]
                if not older:
                    raise ValueError(f"{code_dir} knows no binding for {name}")
                name = older[-1]
            arg = f"--gin_bindings={name} ={value}"
        out.append(arg)
    return out


def _run(code_dir: str, args: list, model_dir: str) -> list:
    env = harness.subprocess_env(code_dir)
    cmd = [sys.executable, os.path.join(code_dir, "tools", "train.py"),
           f"--model_dir={model_dir}", *_for_checkout(code_dir, args),
           "--gin_bindings=TrainConfig.deterministic = True",
           "--gin_bindings=TrainConfig.log_steps = True"]
    out = subprocess.run(cmd, cwd=code_dir, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    with open(os.path.join(model_dir, "steps.jsonl")) as f:
        steps = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:  # the kNN monitor's epochs
        knn = [[r.get("knn_top1"), r.get("knn_top5")] for r in map(json.loads, f)
               if "knn_top1" in r]
    return steps, knn


def _compare(before: tuple, after: tuple) -> dict:
    (before, knn_before), (after, knn_after) = before, after
    keys = ("loss", "instance_acc")
    pairs = list(zip(before, after))
    differing = [b["step"] for b, a in pairs if any(b.get(k) != a.get(k) for k in keys)]
    return {"steps": len(before), "steps_after": len(after),
            "knn": knn_before, "knn_after": knn_after,
            "identical": len(before) == len(after) and not differing
            and knn_before == knn_after,
            "first_differing_step": differing[0] if differing else None,
            "final_loss": [before[-1]["loss"], after[-1]["loss"]] if pairs else None}


def main(argv):
    del argv
    if not FLAGS.code_dirs or len(FLAGS.code_dirs) != 2:
        raise app.UsageError("--code_dirs needs two checkouts: BEFORE,AFTER")
    dirs = [os.path.abspath(d) for d in FLAGS.code_dirs]
    for d in dirs:
        if not os.path.exists(os.path.join(d, "tools", "train.py")):
            raise app.UsageError(f"--code_dirs: {d} is not a tf_instcls checkout "
                                 "(no tools/train.py)")
    cases = _cases()
    cases["eval_tools"] = None
    unknown = [c for c in FLAGS.cases if c not in cases]
    if unknown:
        raise app.UsageError(f"--cases: unknown {unknown}; accepted: {sorted(cases)}")
    work = os.path.abspath(FLAGS.work_dir or tempfile.mkdtemp(prefix="check_unchanged_"))
    results = {}
    for name in FLAGS.cases:
        if name == "eval_tools":
            tools_ = _eval_tools(dirs, work)
            results[name] = {"identical": all(t["identical"] for t in tools_.values()),
                             "tools": tools_}
            for tool, t in tools_.items():
                print(f"eval_tools/{tool}: {len(t['results'])} results, "
                      f"{'bit-identical' if t['identical'] else 'DIFFERENT'} "
                      f"{t['differing'] or ''}", flush=True)
            continue
        logs = []
        for tag, code_dir in zip(("before", "after"), dirs):
            model_dir = os.path.join(work, name, tag)
            shutil.rmtree(model_dir, ignore_errors=True)
            logs.append(_run(code_dir, cases[name], model_dir))
        results[name] = _compare(*logs)
        verdict = "bit-identical" if results[name]["identical"] else "DIFFERENT"
        print(f"{name}: {results[name]['steps']} steps and "
              f"{len(results[name]['knn'])} kNN evaluations, {verdict} "
              f"(final loss {results[name]['final_loss']})", flush=True)
    if FLAGS.json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
        with open(FLAGS.json, "w") as f:
            json.dump({"code_dirs": dirs, "cases": {k: cases[k] for k in FLAGS.cases},
                       "results": results}, f, indent=1)
    if not all(r["identical"] for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
