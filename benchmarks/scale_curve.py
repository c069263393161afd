r"""Each stage's cost as N grows: the same scale run at several N.

For every N: ``tools/train.py`` on ``synthetic:N:SIZE`` for ``--max_steps`` steps (the
prior, one exact mining pass, the steps, a checkpoint), the same command again (it
restores the checkpoint and stops: the restore's time), ``tools/export.py``, and
``benchmarks/bench_classifier.py`` at the same N, D and batch (the classifier's part of the
step). ``--large_ns`` are run without the prior and without mining (Gaussian W, no
smoothing): the N^2 mining and the linear prior are not affordable there on this CPU, so
they are projected from the fits. Each stage is fitted to its law (a + b N, mining
a + c N^2) and plotted.

  python benchmarks/scale_curve.py --ns=10000,100000 --reuse=1281167:runs/million \
      --large_ns=8000000 --large_chunk_size=64 --gin_file=gin/scale_synthetic.gin \
      --out_dir=runs/curve
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from processes import export_command, run_process, summarise, tool_command, train_command

FLAGS = flags.FLAGS
flags.DEFINE_list("ns", ["10000", "100000"], "N values with every stage.")
flags.DEFINE_list("large_ns", [], "N values without the prior and mining (projected).")
flags.DEFINE_integer("image_size", 16, "SIZE of synthetic:N:SIZE.", lower_bound=8)
flags.DEFINE_multi_string("gin_file", [], "gin files for tools/train.py.")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings for tools/train.py.")
flags.DEFINE_integer("virtual_devices", 4, "T virtual CPU devices.", lower_bound=1)
flags.DEFINE_integer("max_steps", 30, "Steps per run.", lower_bound=2)
flags.DEFINE_integer("batch_size", 128, "Instances per step (2 views each).", lower_bound=1)
flags.DEFINE_integer("dim", 32, "D for the classifier benchmark (the gin file's "
                     "ModelConfig.embedding_dim).", lower_bound=1)
flags.DEFINE_string("runs_dir", "runs/scale_curve", "Where the runs' model_dirs go.")
flags.DEFINE_multi_string("reuse", [], "N:MODEL_DIR of a finished scale run (e.g. the "
                          "million-way run of benchmarks/run_scale.py) to take N's stages from "
                          "instead of training again; the classifier benchmark still runs.")
flags.DEFINE_integer("large_chunk_size", 0, "ClassifierConfig.chunk_size for --large_ns, in the "
                     "run and the classifier benchmark (0: unchunked): bounds the [2B, N/T] "
                     "logits per device.", lower_bound=0)
flags.DEFINE_string("out_dir", "runs/curve", "JSON, Markdown and PNG go here.")
flags.DEFINE_string("from_json", None, "Refit and redraw the rows of an earlier "
                    "scale_curve.json instead of measuring.")

LAWS = {"startup": 1, "restore": 1, "prior": 1, "mining": 2, "checkpoint": 1, "step": 1,
        "classifier_step": 1, "export": 1}


def _bench_classifier(n: int, log: str, chunk: int = 0) -> dict:
    out = log + ".json"
    run_process(tool_command(
        "bench_classifier", f"--num_instances={n}", f"--dim={FLAGS.dim}",
        f"--batch_size={2 * FLAGS.batch_size}", f"--virtual_devices={FLAGS.virtual_devices}",
        "--layouts=sharded", "--smoothing=0.2", "--num_hard=100", "--steps=5", "--warmup=2",
        f"--chunk_size={chunk}", "--torch_peer=false", f"--json={out}"), log)
    with open(out) as f:
        records = json.load(f)
    return next(r for r in records if r.get("layout") == "sharded" and "step_ms_median" in r)


def measure(n: int, large: bool, reuse: str | None = None) -> dict:
    if reuse:
        return _row(n, large, reuse, processes={})
    model_dir = os.path.join(FLAGS.runs_dir, f"n{n}")
    bindings = list(FLAGS.gin_bindings)
    if large:
        bindings += ["ClassifierConfig.init_mode = 'gaussian'", "FullConfig.smoothing = 0.0",
                     "FullConfig.num_hard_negatives = 0"]
        if FLAGS.large_chunk_size:
            bindings.append(f"ClassifierConfig.chunk_size = {FLAGS.large_chunk_size}")
    train = train_command(model_dir, f"synthetic:{n}:{FLAGS.image_size}",
                          virtual_devices=FLAGS.virtual_devices, max_steps=FLAGS.max_steps,
                          batch_size=FLAGS.batch_size, gin_files=FLAGS.gin_file,
                          gin_bindings=bindings)
    os.makedirs(model_dir, exist_ok=True)
    processes = {
        "train": run_process(train, os.path.join(model_dir, "console_1.txt")),
        "restore": run_process(train, os.path.join(model_dir, "console_2.txt")),
        "export": run_process(export_command(model_dir),
                              os.path.join(model_dir, "console_export.txt")),
    }
    failed = {k: p["returncode"] for k, p in processes.items() if p["returncode"]}
    if failed:
        raise SystemExit(f"N = {n}: {failed} (logs in {model_dir}/console_*.txt)")
    return _row(n, large, model_dir, processes)


def _row(n: int, large: bool, model_dir: str, processes: dict) -> dict:
    from tf_instcls.training import stages

    records = stages.read(model_dir)
    summary = summarise(records)
    first = {}  # each stage's first record: the start-up without a restore, ...
    for r in records:
        first.setdefault(r["stage"], r["seconds"])
    row = {"n": n, "large": large, "processes": processes, "stages": summary,
           "seconds": {name: first[name] for name in
                       ("startup", "restore", "prior", "mining", "checkpoint", "export")
                       if name in first},
           "model_dir": model_dir,
           "peak_rss_gib": max([p["peak_rss_gib"] for p in processes.values()]
                               + [r["peak_rss_gib"] for r in records])}
    row["seconds"]["step"] = summary["steps"]["step_median_s"]
    row["checkpoint_bytes"] = summary["checkpoint"]["bytes"]
    bench = _bench_classifier(n, os.path.join(model_dir, "bench_classifier.txt"),
                              FLAGS.large_chunk_size if large else 0)
    row["seconds"]["classifier_step"] = bench["step_ms_median"] / 1000
    row["matmul_peak_gflops"] = bench.get("matmul_peak_gflops")  # same-run float32 peak
    return row


def fit(rows: list[dict], stage: str) -> dict | None:
    """seconds = a + b N^p (p = 1, or 2 for mining) by least squares of the relative
    error (each point weighted by 1 / seconds: N spans three decades)."""
    import numpy as np

    points = [(r["n"], r["seconds"][stage]) for r in rows if stage in r["seconds"]]
    if len(points) < 2:
        return None
    power = LAWS[stage]
    n = np.array([p[0] for p in points], float)
    y = np.array([p[1] for p in points], float)
    design = np.stack([np.ones_like(n), n ** power], 1) / y[:, None]
    a, b = np.linalg.lstsq(design, np.ones_like(y), rcond=None)[0]
    return {"law": "a + b N" if power == 1 else "a + b N^2", "a_s": float(a), "b": float(b),
            "power": power, "points": len(points),
            "max_relative_residual": float(np.max(np.abs(a + b * n ** power - y)
                                                  / np.maximum(y, 1e-9)))}


def plot(rows, fits, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 5))
    grid = np.geomspace(min(r["n"] for r in rows), max(r["n"] for r in rows) * 1.5, 50)
    for i, stage in enumerate(LAWS):
        points = [(r["n"], r["seconds"][stage]) for r in rows if stage in r["seconds"]]
        if not points:
            continue
        color = f"C{i}"
        ax.loglog(*zip(*points), "o", color=color, label=stage)
        if fits.get(stage):
            f = fits[stage]
            ax.loglog(grid, np.maximum(f["a_s"] + f["b"] * grid ** f["power"], 1e-3), "-",
                      color=color, alpha=0.5)
    ax.set_xlabel("N (instances = classes)")
    ax.set_ylabel("seconds (one pass / one step)")
    ax.set_title("Stage cost against N (points measured, lines fitted)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    rows = []
    path = os.path.join(FLAGS.out_dir, "scale_curve.json")
    if FLAGS.from_json:
        with open(FLAGS.from_json) as f:
            rows = json.load(f)["rows"]
    reused = dict(item.split(":", 1) for item in FLAGS.reuse)
    plan = sorted([(int(n), False) for n in [*FLAGS.ns, *reused]]
                  + [(int(n), True) for n in FLAGS.large_ns])
    for n, large in plan if not FLAGS.from_json else []:
        rows.append(measure(n, large, reused.get(str(n))))
        print(f"N = {n}: {rows[-1]['seconds']}", flush=True)
        with open(path, "w") as f:  # after every N: a stopped sweep keeps what it has
            json.dump({"rows": rows}, f, indent=1)
    fits = {stage: fit(rows, stage) for stage in LAWS}
    with open(path, "w") as f:
        json.dump({"rows": rows, "fits": fits, "flags": {
            "gin_file": FLAGS.gin_file, "gin_bindings": FLAGS.gin_bindings,
            "virtual_devices": FLAGS.virtual_devices, "batch_size": FLAGS.batch_size,
            "dim": FLAGS.dim, "max_steps": FLAGS.max_steps}}, f, indent=1)
    lines = ["| N | " + " | ".join(LAWS) + " | checkpoint bytes | peak RSS GiB |",
             "|---|" + "---|" * (len(LAWS) + 2)]
    for r in rows:
        cells = [f"{r['seconds'][s]:.3g}" if s in r["seconds"] else "-" for s in LAWS]
        lines.append(f"| {r['n']:,} | " + " | ".join(cells)
                     + f" | {r['checkpoint_bytes']:,} | {r['peak_rss_gib']:.2f} |")
    lines += ["", "| stage | law | a (s) | b | worst relative residual |", "|---|---|---|---|---|"]
    for stage, f in fits.items():
        if f:
            lines.append(f"| {stage} | {f['law']} | {f['a_s']:.3g} | {f['b']:.3g} | "
                         f"{f['max_relative_residual']:.2f} |")
    lines += ["", "Per point, seconds / N^p (the constant each measurement implies):", "",
              "| stage | " + " | ".join(f"N = {r['n']:,}" for r in rows) + " |",
              "|---|" + "---|" * len(rows)]
    for stage, power in LAWS.items():
        cells = [f"{r['seconds'][stage] / r['n'] ** power:.3g}" if stage in r["seconds"]
                 else "-" for r in rows]
        lines.append(f"| {stage} (N^{power}) | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(FLAGS.out_dir, "scale_curve.md"), "w") as f:
        f.write(text)
    plot(rows, fits, os.path.join(FLAGS.out_dir, "scale_curve.png"))
    print(text)


if __name__ == "__main__":
    app.run(main)
