r"""On paper, from measured constants: a run at N classes on P GPUs.

Bytes are exact arithmetic of what the code allocates per device (W, its momentum and
the hard-negative table, 1/P each; the [2B, N/P] logits of the step and their gradient;
the [bs, N/P] similarities of a mining block). Communication per step is what the
hybrid-parallel step moves (DESIGN.md's 8 steps): the features all-gathered, two
[2B] all-reduces (the softmax's max and exp-sum), the [2B, D] feature gradients
all-reduced, and the backbone's gradients all-reduced. Times scale the constants this
machine measured (``benchmarks/scale_curve.py``'s fits: mining seconds per N^2 D, checkpoint
bytes per second) by a stated device speed; they are projections, not measurements.

  python benchmarks/project_scale.py --curve=runs/curve/scale_curve.json \
      --out=runs/curve/projections.md
"""

from __future__ import annotations

import json

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("curve", None, "scale_curve.json (its fits and rows).")
flags.DEFINE_list("ns", ["1281167", "14200000", "100000000"], "N to project.")
flags.DEFINE_list("devices", ["64", "256"], "GPU counts.")
flags.DEFINE_integer("dim", 128, "D (the paper's).")
flags.DEFINE_integer("k", 100, "K hard negatives.")
flags.DEFINE_integer("global_batch", 4096, "Instances per step (two views each).")
flags.DEFINE_integer("backbone_params", 28_000_000, "Backbone + head parameters: "
                     "ResNet-50 without its fc (23.5M) + the 2048-2048-128 MLP head (4.5M).")
flags.DEFINE_integer("chunk", 512, "ClassifierConfig.chunk_size for the chunked column: logits of "
                     "this many rows at a time.")
flags.DEFINE_integer("mining_block", 4096, "Query rows per mining block.")
flags.DEFINE_float("gpu_tflops", 14.0, "Sustained float32 TFLOP/s of one GPU for the "
                   "mining matmul (V100: 15.7 peak).")
flags.DEFINE_float("measured_dim", 32, "D of the measured mining constant.")
flags.DEFINE_float("cpu_gflops", 475.0, "This CPU's float32 matmul GFLOP/s (the classifier "
                   "benchmark's same-run 4096^2 matmul peak in the scale-curve runs: "
                   "462-479), to convert the mining constant at the same fraction of peak.")
flags.DEFINE_float("write_gbps_per_host", 1.0, "Checkpoint write GB/s of one host (8 GPUs).")
flags.DEFINE_string("out", None, "Write the Markdown table here.")


def project(n: int, p: int, mining_b: float | None, write_bps: float | None) -> dict:
    d, k, b = FLAGS.dim, FLAGS.k, FLAGS.global_batch
    views = 2 * b
    rows = -(-n // p)
    w_bytes = rows * d * 4
    table = rows * k * 4
    logits = 2 * views * rows * 4  # logits and their gradient (unchunked)
    # the library's block rule: up to mining_block queries, at most ~2 GiB a device
    block = min(FLAGS.mining_block, max(256, (2 << 30) // (4 * rows)))
    mining = block * rows * 4
    out = {"n": n, "devices": p, "rows_per_device": rows,
           "w_and_momentum_gib": 2 * w_bytes / 2**30, "table_gib": table / 2**30,
           "step_buffers_gib": logits / 2**30, "mining_block_gib": mining / 2**30,
           "per_device_gib": (2 * w_bytes + table + max(logits, mining)) / 2**30}
    chunked = 2 * min(FLAGS.chunk, views) * rows * 4
    out["per_device_chunked_gib"] = (2 * w_bytes + table + max(chunked, mining)) / 2**30
    ring = 2 * (p - 1) / p  # bytes a device sends per byte all-reduced (ring)
    gather = (p - 1) / p * views * d * 4  # all-gather of the features
    reduce_bytes = ring * (2 * views * 4 + views * d * 4 + FLAGS.backbone_params * 4)
    out["comm_mib_per_step"] = (gather + reduce_bytes) / 2**20
    out["comm_classifier_mib_per_step"] = (gather + ring * (2 * views * 4 + views * d * 4)) \
        / 2**20
    if mining_b is not None:
        # measured: seconds = b N^2 at measured_dim on this CPU -> flop-equivalent rate
        cpu_seconds = mining_b * n * n * d / FLAGS.measured_dim
        out["mining_s_per_epoch"] = cpu_seconds * FLAGS.cpu_gflops / (FLAGS.gpu_tflops
                                                                      * 1e3) / p
    ckpt = n * (2 * d + k) * 4 + 2 * FLAGS.backbone_params * 4
    out["checkpoint_gb"] = ckpt / 1e9
    hosts = max(1, p // 8)
    out["checkpoint_write_s"] = ckpt / (FLAGS.write_gbps_per_host * 1e9 * hosts)
    if write_bps:
        out["checkpoint_write_s_this_disk"] = ckpt / write_bps
    return out


def main(argv):
    del argv
    mining_b = write_bps = None
    if FLAGS.curve:
        with open(FLAGS.curve) as f:
            curve = json.load(f)
        if curve.get("fits", {}).get("mining"):
            mining_b = curve["fits"]["mining"]["b"]
        rates = [r["checkpoint_bytes"] / r["seconds"]["checkpoint"] for r in curve["rows"]
                 if r["seconds"].get("checkpoint")]
        write_bps = max(rates) if rates else None
    rows = [project(int(n), int(p), mining_b, write_bps)
            for n in FLAGS.ns for p in FLAGS.devices]
    lines = [f"D = {FLAGS.dim}, K = {FLAGS.k}, batch {FLAGS.global_batch} (x 2 views), "
             f"backbone {FLAGS.backbone_params / 1e6:.1f}M parameters; GPU "
             f"{FLAGS.gpu_tflops} TFLOP/s for mining; {FLAGS.write_gbps_per_host} GB/s "
             "checkpoint writes per 8-GPU host", "",
             "| N | GPUs | rows / GPU | W + momentum GiB | table GiB | step buffers GiB | "
             f"per GPU GiB | chunk {FLAGS.chunk}: per GPU GiB | comm MiB / step (classifier "
             "part) | mining s / epoch | checkpoint GB | write s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mining = f"{r['mining_s_per_epoch']:.0f}" if "mining_s_per_epoch" in r else "-"
        lines.append(
            f"| {r['n']:,} | {r['devices']} | {r['rows_per_device']:,} | "
            f"{r['w_and_momentum_gib']:.2f} | {r['table_gib']:.2f} | "
            f"{r['step_buffers_gib']:.2f} | {r['per_device_gib']:.2f} | "
            f"{r['per_device_chunked_gib']:.2f} | "
            f"{r['comm_mib_per_step']:.0f} ({r['comm_classifier_mib_per_step']:.1f}) | "
            f"{mining} | {r['checkpoint_gb']:.1f} | {r['checkpoint_write_s']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(text)
        with open(FLAGS.out.rsplit(".", 1)[0] + ".json", "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    app.run(main)
