r"""Soak check: trains with random SIGKILLs and restarts, then verifies that the final
state equals an uninterrupted run's, tensor by tensor.

  python benchmarks/soak.py --work_dir=/tmp/soak --budget_s=600
  python benchmarks/soak.py --work_dir=/tmp/soak --gin_file=gin/cifar10_subset_npz.gin \
      --gin_bindings="TrainConfig.epochs = 3" --kill_min_s=5 --kill_max_s=30

Both runs use ``TrainConfig.deterministic = True`` (op determinism) and save often
(``--checkpoint_every_steps``). Kills happen at uniformly random times in
[--kill_min_s, --kill_max_s] after each (re)start's first training step, until
--budget_s is spent; then the run
is left to finish. Writes <work_dir>/soak.json; exits 1 if any tensor or any step's
loss differs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from absl import app, flags

import harness

ROOT = harness.ROOT
FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", None, "Holds reference/, soak/ and soak.json.")
flags.DEFINE_multi_string("gin_file", [os.path.join(harness.GIN_DIR, "digits.gin")],
                          "Training config (default: the digits demo).")
flags.DEFINE_multi_string("gin_bindings", ["DataConfig.image_size = 16",
                                           "ModelConfig.backbone_width = 8",
                                           "ModelConfig.head_hidden_dim = 32",
                                           "TrainConfig.epochs = 3",
                                           "TrainConfig.batch_size = 64"],
                          "gin bindings for both runs (default: a small digits run).")
flags.DEFINE_integer("checkpoint_every_steps", 4, "Checkpoint period of both runs.",
                     lower_bound=1)
flags.DEFINE_integer("virtual_devices", 2, "Virtual CPU devices (0 = real devices).",
                     lower_bound=0)
flags.DEFINE_float("budget_s", 300.0, "Seconds during which kills happen.", lower_bound=0)
flags.DEFINE_float("kill_min_s", 0.5, "Shortest time from a (re)start's first step to its "
                   "kill.")
flags.DEFINE_float("kill_max_s", 6.0, "Longest time from a (re)start's first step to its "
                   "kill.")
flags.DEFINE_integer("seed", 0, "Seed of the kill times.")
flags.DEFINE_float("tolerance", 1e-5, "Allowed relative difference per tensor / loss.")
flags.mark_flag_as_required("work_dir")


def _command(model_dir):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), f"--model_dir={model_dir}",
           f"--virtual_devices={FLAGS.virtual_devices}"]
    cmd += [f"--gin_file={path}" for path in FLAGS.gin_file]
    bindings = list(FLAGS.gin_bindings) + [
        "TrainConfig.deterministic = True", "TrainConfig.log_steps = True",
        f"TrainConfig.checkpoint_every_steps = {FLAGS.checkpoint_every_steps}"]
    return cmd + [f"--gin_bindings={b}" for b in bindings]



def _run_to_end(model_dir, log):
    with open(log, "a") as out:
        proc = subprocess.run(_command(model_dir), env=harness.subprocess_env(), stdout=out,
                              stderr=out)
    if proc.returncode != 0:
        raise RuntimeError(f"training in {model_dir} failed (rc {proc.returncode}); see {log}")


def _count_steps(model_dir) -> int:
    path = os.path.join(model_dir, "steps.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def _losses(model_dir):
    by_step = {}
    with open(os.path.join(model_dir, "steps.jsonl")) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_step[record["step"]] = record["loss"]  # a replayed step: the last one
    return by_step


def compare_checkpoints(a: str, b: str, tolerance: float) -> list[str]:
    """Keys whose tensors differ (relative to their scale) between two checkpoints."""
    import numpy as np
    import tensorflow as tf

    ra, rb = tf.train.load_checkpoint(a), tf.train.load_checkpoint(b)
    keys_a = set(ra.get_variable_to_shape_map())
    keys_b = set(rb.get_variable_to_shape_map())
    diffs = [f"{k}: only in one checkpoint" for k in sorted(keys_a ^ keys_b)]
    for key in sorted(keys_a & keys_b):
        if key == "_CHECKPOINTABLE_OBJECT_GRAPH" or key.startswith("save_counter"):
            continue
        x, y = np.asarray(ra.get_tensor(key)), np.asarray(rb.get_tensor(key))
        if x.shape != y.shape:
            diffs.append(f"{key}: shape {x.shape} vs {y.shape}")
            continue
        scale = max(float(np.abs(x).max()) if x.size else 0.0, 1e-12)
        err = float(np.abs(x.astype(np.float64) - y).max()) / scale if x.size else 0.0
        if err > tolerance:
            diffs.append(f"{key}: relative difference {err:.3g}")
    return diffs


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not 0 < FLAGS.kill_min_s <= FLAGS.kill_max_s:
        raise app.UsageError("need 0 < --kill_min_s <= --kill_max_s")
    import tensorflow as tf

    os.makedirs(FLAGS.work_dir, exist_ok=True)
    reference = os.path.join(FLAGS.work_dir, "reference")
    soak = os.path.join(FLAGS.work_dir, "soak")
    log = os.path.join(FLAGS.work_dir, "soak.log")
    if not os.path.exists(os.path.join(reference, "steps.jsonl")):
        print(f"uninterrupted reference run in {reference} ...", flush=True)
        _run_to_end(reference, log)
    rng = random.Random(FLAGS.seed)
    kills, restarts, start = [], 0, time.time()
    while time.time() - start < FLAGS.budget_s:
        wait = rng.uniform(FLAGS.kill_min_s, FLAGS.kill_max_s)
        with open(log, "a") as out:
            steps_before = _count_steps(soak)
            proc = subprocess.Popen(_command(soak), env=harness.subprocess_env(), stdout=out,
                                    stderr=out)
            # the clock starts at this attempt's first step (start-up is not training)
            while proc.poll() is None and _count_steps(soak) <= steps_before:
                time.sleep(0.05)
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                latest = tf.train.latest_checkpoint(os.path.join(soak, "checkpoints"))
                kills.append({"after_s": round(wait, 2), "latest_checkpoint": latest})
                print(f"kill {len(kills)} after {wait:.1f} s (latest checkpoint {latest})",
                      flush=True)
                restarts += 1
                continue
        if proc.returncode != 0:
            raise RuntimeError(f"the soak run failed (rc {proc.returncode}); see {log}")
        break
    else:
        _run_to_end(soak, log)  # budget spent: let it finish
    final_ref = tf.train.latest_checkpoint(os.path.join(reference, "checkpoints"))
    final_soak = tf.train.latest_checkpoint(os.path.join(soak, "checkpoints"))
    diffs = compare_checkpoints(final_ref, final_soak, FLAGS.tolerance)
    ref_losses, soak_losses = _losses(reference), _losses(soak)
    loss_diffs = [s for s in ref_losses
                  if s not in soak_losses or abs(ref_losses[s] - soak_losses[s])
                  > FLAGS.tolerance * max(1.0, abs(ref_losses[s]))]
    report = {"kills": kills, "restarts": restarts, "seconds": round(time.time() - start, 1),
              "reference_checkpoint": final_ref, "soak_checkpoint": final_soak,
              "tensor_differences": diffs, "steps": len(ref_losses),
              "steps_with_different_loss": loss_diffs, "equal": not diffs and not loss_diffs}
    with open(os.path.join(FLAGS.work_dir, "soak.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"{len(kills)} kills; final state {'EQUALS' if report['equal'] else 'DIFFERS FROM'} "
          f"the uninterrupted run ({len(ref_losses)} steps, {len(diffs)} tensors differ, "
          f"{len(loss_diffs)} step losses differ); report {FLAGS.work_dir}/soak.json")
    if not report["equal"]:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
