r"""Per-epoch wall time of ``tools/train.py`` for several checkouts of this repository,
interleaved (A B A B ...) so that both see the same machine: the before / after
measurement of a change to the epoch loop.

  git worktree add /tmp/before <commit>
  python benchmarks/bench_epochs.py --code_dirs=/tmp/before,. --rounds=2 --epochs=6 \
      --dataset=npz:runs/recipe/train_unlabelled.npz --gin_file=gin/cifar10_subset_npz.gin \
      --json=runs/bench/bench_epochs.json

Each run is a fresh model_dir. Reported per checkout: the median over rounds of the
median epoch time (metrics.jsonl ``train_seconds``, epoch 0 left out: it traces), of
the mean epoch's wall time in the loop (stages.jsonl: from one epoch's steps to the
next's, so mining, callbacks and the checkpoint are in it; a mean, so that a checkpoint
every k epochs is spread over them: take epochs = 2 + a multiple of k) and of the part
of it that is not the steps (less noisy than the steps themselves), of the whole
process' wall time, and the images per second of the epoch loop. Run nothing else heavy beside it.

``--variant_binding`` (one per ``--code_dirs`` entry, '' for none) adds a gin binding
to that entry's runs, so one checkout can be measured against itself with an option
changed, e.g. the checkpoint period:

  python benchmarks/bench_epochs.py --code_dirs=.,. --variant_binding= \
      --variant_binding="TrainConfig.checkpoint_every_epochs = 5" ...
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from tf_instcls.training import stages

import harness

FLAGS = flags.FLAGS
flags.DEFINE_list("code_dirs", None, "Checkouts to compare (each has tools/train.py).")
flags.DEFINE_integer("rounds", 2, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_integer("epochs", 6, "Epochs per run (>= 2: epoch 0 is left out).", lower_bound=2)
flags.DEFINE_string("dataset", None, "--dataset of every run.")
flags.DEFINE_multi_string("gin_file", [], "--gin_file of every run (relative to each "
                          "checkout unless absolute).")
flags.DEFINE_multi_string("gin_bindings", [], "--gin_bindings of every run.")
flags.DEFINE_multi_string("variant_binding", [], "One gin binding per --code_dirs entry "
                          "('' for none), added to that entry's runs only.")
flags.DEFINE_string("json", None, "Write the records and the summary here.")


def one_run(code_dir: str, binding: str = "") -> dict:
    model_dir = tempfile.mkdtemp(prefix="bench_epochs_")
    cmd = [sys.executable, os.path.join(code_dir, "tools", "train.py"),
           f"--model_dir={model_dir}", f"--epochs={FLAGS.epochs}",
           *[f"--gin_file={g if os.path.isabs(g) else os.path.join(code_dir, g)}"
             for g in FLAGS.gin_file],
           *[f"--gin_bindings={b}" for b in [*FLAGS.gin_bindings, binding] if b],
           *([f"--dataset={FLAGS.dataset}"] if FLAGS.dataset else [])]
    env = harness.subprocess_env(code_dir)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code_dir)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(model_dir, "run_info.json")) as f:
        batch = int(json.load(f)["batch_size"])
    epochs = [r["train_seconds"] for r in records if r.get("epoch", 0) > 0]
    steps = records[-1]["step"] - records[0]["step"]
    loop = stages.epoch_loop_times(model_dir)
    overhead = [w - s for w, s in loop]
    return {"code_dir": code_dir, "binding": binding, "wall_s": wall, "epoch_s": epochs,
            "median_epoch_s": statistics.median(epochs), "loop_epoch_s": [w for w, _ in loop],
            "mean_loop_epoch_s": statistics.mean(w for w, _ in loop) if loop else float("nan"),
            "overhead_s": overhead,
            "mean_overhead_s": statistics.mean(overhead) if overhead else float("nan"),
            "images_per_s": steps * batch / sum(epochs), "model_dir": model_dir}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.code_dirs or len(FLAGS.code_dirs) < 1:
        raise app.UsageError("--code_dirs: one or more checkouts")
    for code_dir in FLAGS.code_dirs:
        if not os.path.exists(os.path.join(code_dir, "tools", "train.py")):
            raise app.UsageError(f"--code_dirs: {code_dir} has no tools/train.py")
    bindings = FLAGS.variant_binding or [""] * len(FLAGS.code_dirs)
    if len(bindings) != len(FLAGS.code_dirs):
        raise app.UsageError(f"--variant_binding: {len(bindings)} given for "
                             f"{len(FLAGS.code_dirs)} --code_dirs entries (one each, '' for none)")
    variants = [(c, b, c + (f" + {b}" if b else "")) for c, b in zip(FLAGS.code_dirs, bindings)]
    if len({name for *_, name in variants}) != len(variants):
        raise app.UsageError("--code_dirs / --variant_binding: two entries are the same run")
    records = []
    for round_index in range(FLAGS.rounds):
        for code_dir, binding, name in variants:
            record = one_run(code_dir, binding)
            record["round"], record["variant"] = round_index, name
            records.append(record)
            print(f"round {round_index} {name}: median epoch {record['median_epoch_s']:.2f} s "
                  f"(in the loop, mean {record['mean_loop_epoch_s']:.2f} s, of which not steps "
                  f"{record['mean_overhead_s']:.2f} s), "
                  f"{record['images_per_s']:.0f} images/s, wall {record['wall_s']:.0f} s",
                  flush=True)
    summary = {}
    keys = ("median_epoch_s", "mean_loop_epoch_s", "mean_overhead_s", "images_per_s", "wall_s")
    for *_, name in variants:
        mine = [r for r in records if r["variant"] == name]
        summary[name] = {key: {"median": statistics.median(r[key] for r in mine),
                               "min": min(r[key] for r in mine),
                               "max": max(r[key] for r in mine)} for key in keys}
    first = variants[0][2]
    print("| run | median epoch s (min-max) | mean epoch in the loop s (min-max) | of which "
          "not steps s (min-max) | images/s | wall s | epoch in the loop vs first |")
    print("|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        e, loop, over, i, w = (s[key] for key in keys)
        ratio = loop["median"] / summary[first]["mean_loop_epoch_s"]["median"]
        print(f"| {name} | {e['median']:.2f} ({e['min']:.2f}-{e['max']:.2f}) | "
              f"{loop['median']:.2f} ({loop['min']:.2f}-{loop['max']:.2f}) | "
              f"{over['median']:.2f} ({over['min']:.2f}-{over['max']:.2f}) | "
              f"{i['median']:.0f} | {w['median']:.0f} | {ratio:.3f} |")
    if FLAGS.json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
        with open(FLAGS.json, "w") as f:
            json.dump({"flags": {"epochs": FLAGS.epochs, "rounds": FLAGS.rounds,
                                 "dataset": FLAGS.dataset, "gin_file": FLAGS.gin_file,
                                 "gin_bindings": FLAGS.gin_bindings,
                                 "variant_binding": bindings},
                       "records": records, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
