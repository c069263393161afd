r"""A scale run as a user would do it, with each stage's time and memory.

Runs ``tools/train.py`` with ``--max_steps``; with ``--kill_at_step`` the first process
is SIGKILLed once it has logged that step (after at least one checkpoint), and the same
command is run again, resuming from the checkpoint; then ``tools/export.py``. Every
process's wall time and peak resident memory (from ``wait4``) are recorded, and the
stages the processes wrote (``stages.jsonl``: start-up, restore, prior, mining, steps,
checkpoints, kNN, export) are collated into one JSON and a Markdown table.

  python benchmarks/run_scale.py --dataset=synthetic:1281167:16 --model_dir=runs/million \
      --gin_file=gin/scale_synthetic.gin --virtual_devices=4 --max_steps=250 \
      --kill_at_step=150 --json=runs/million/million.json
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from processes import export_command, logged_steps, run_process, summarise, train_command

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, "The training data, e.g. synthetic:1281167:16.")
flags.DEFINE_string("model_dir", None, "A new (or this tool's earlier) run directory.")
flags.DEFINE_multi_string("gin_file", [], "gin files for tools/train.py (in order).")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings for tools/train.py.")
flags.DEFINE_integer("virtual_devices", 4, "T virtual CPU devices (W sharded over them).",
                     lower_bound=0)
flags.DEFINE_integer("batch_size", None, "Overrides TrainConfig.batch_size.", lower_bound=1)
flags.DEFINE_integer("max_steps", 250, "Global step to train to (TrainConfig.max_steps).",
                     lower_bound=1)
flags.DEFINE_integer("kill_at_step", 0, "SIGKILL the first process once it has logged this "
                     "step (and written a checkpoint), then resume; 0: no kill.", lower_bound=0)
flags.DEFINE_bool("export", True, "Export the encoder at the end (tools/export.py).")
flags.DEFINE_string("json", None, "Write the collated record here (and a .md beside it).")


def markdown(result: dict) -> str:
    lines = [f"Scale run: {result['dataset']}, {result['virtual_devices']} devices, "
             f"max_steps {result['max_steps']}", "",
             "| process | wall s | peak RSS GiB | return code | note |", "|---|---|---|---|---|"]
    for name, p in result["processes"].items():
        note = "SIGKILLed" if p["killed"] else ""
        lines.append(f"| {name} | {p['seconds']:.1f} | {p['peak_rss_gib']:.2f} | "
                     f"{p['returncode']} | {note} |")
    lines += ["", "| stage | count | total s | median s | peak RSS GiB (process, so far) | "
              "bytes |", "|---|---|---|---|---|---|"]
    for name, s in result["stages"].items():
        extra = (f" (median step {s['step_median_s']:.3f} s over {s['steps']} timed steps)"
                 if "step_median_s" in s else "")
        lines.append(f"| {name}{extra} | {s['count']} | {s['total_s']:.1f} | "
                     f"{s['median_s']:.2f} | {s['peak_rss_gib']:.2f} | {s.get('bytes', '')} |")
    if "replayed" in result:
        r = result["replayed"]
        lines += ["", f"Killed after step {r['killed_after_step']}; resumed from step "
                  f"{r['restored_step']}; {r['steps']} steps replayed, largest loss "
                  f"difference {r['max_abs_loss_difference']}."]
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.dataset or not FLAGS.model_dir:
        raise app.UsageError("--dataset and --model_dir are required")
    if FLAGS.kill_at_step >= FLAGS.max_steps:
        raise app.UsageError(f"--kill_at_step ({FLAGS.kill_at_step}) must be below "
                             f"--max_steps ({FLAGS.max_steps})")
    from tf_instcls.training import stages

    model_dir = FLAGS.model_dir
    os.makedirs(model_dir, exist_ok=True)
    train = train_command(model_dir, FLAGS.dataset, virtual_devices=FLAGS.virtual_devices,
                          max_steps=FLAGS.max_steps, batch_size=FLAGS.batch_size,
                          gin_files=FLAGS.gin_file,
                          gin_bindings=["TrainConfig.log_steps = True", *FLAGS.gin_bindings])
    processes = {}
    if FLAGS.kill_at_step:
        def due():
            saved = [r for r in stages.read(model_dir) if r["stage"] == "checkpoint"]
            steps = logged_steps(model_dir)
            return bool(saved) and bool(steps) and steps[-1]["step"] >= FLAGS.kill_at_step

        processes["train (killed)"] = run_process(
            train, os.path.join(model_dir, "console_1.txt"), kill_when=due, poll_s=0.5)
        killed_after = logged_steps(model_dir)[-1]["step"]
        processes["train (resumed)"] = run_process(train, os.path.join(model_dir,
                                                                       "console_2.txt"))
    else:
        processes["train"] = run_process(train, os.path.join(model_dir, "console_1.txt"))
    if FLAGS.export:
        processes["export"] = run_process(export_command(model_dir),
                                          os.path.join(model_dir, "console_export.txt"))
    records = stages.read(model_dir)
    result = {"dataset": FLAGS.dataset, "virtual_devices": FLAGS.virtual_devices,
              "max_steps": FLAGS.max_steps, "gin_file": FLAGS.gin_file,
              "gin_bindings": FLAGS.gin_bindings, "processes": processes,
              "stages": summarise(records), "records": records}
    if FLAGS.kill_at_step:
        restore = [r for r in records if r["stage"] == "restore"]
        restored = restore[-1]["step"] if restore else 0
        losses: dict = {}
        for r in logged_steps(model_dir):
            losses.setdefault(r["step"], []).append(r["loss"])
        twice = {s: v for s, v in losses.items() if len(v) > 1}
        result["replayed"] = {
            "killed_after_step": killed_after, "restored_step": restored,
            "steps": len(twice),
            "max_abs_loss_difference": max((abs(v[0] - v[-1]) for v in twice.values()),
                                           default=None)}
    text = markdown(result)
    print(text)
    failed = {k: p["returncode"] for k, p in processes.items()
              if p["returncode"] != 0 and not p["killed"]}
    if FLAGS.json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.splitext(FLAGS.json)[0] + ".md", "w") as f:
            f.write(text)
    if failed:
        raise SystemExit(f"processes failed: {failed} (logs in {model_dir}/console_*.txt)")


if __name__ == "__main__":
    app.run(main)
