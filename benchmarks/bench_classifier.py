r"""Benchmark of one full classifier step: loss, backward, momentum-SGD update of W.

For each layout (sharded = the paper's DHP, replicated = the DDP baseline) and chunk
size, a fresh subprocess configures ``--virtual_devices`` CPU devices (or uses the real
GPUs with --virtual_devices=0), builds W [N, D] on a 1-D DTensor mesh and times
``--steps`` steps on random embeddings. Reported per record: median step time,
per-device bytes held for W + its gradient + its momentum slot + one logits buffer
(from the real per-device shapes), the allocator's measured peak bytes in use during
the timed steps (``alloc_peak_bytes``, from ``tf.config.experimental.get_memory_info``),
the process' peak RSS growth, achieved GFLOP/s
(6 B N D flops per step) and the machine's float32 matmul peak measured in the same run.

Why two memory numbers: TF's default CPU allocator on x86 (oneDNN's pooling allocator)
never returns freed blocks to the OS, so RSS records the pool's high-water mark including
its fragmentation and the runtime's own growth, not what the step holds. The allocator
statistic is what the step holds at its peak (W, momentum, temporaries, logits), the
number GPU users read from ``tf.config.experimental.get_memory_info``.
Also: the largest N each layout fits in --budget_gib per device (the analogue of the
paper's Fig. 3), and the same Eq. 1 step in PyTorch on one device, eager and / or
``torch.compile``d (``--torch_peers``), if torch imports in ``--torch_python`` (torch is
not a dependency: point it at any interpreter that has torch and absl-py). The peers
run in the same interleaved rounds as our configurations.

``--paired`` (Eq. 3's overhead over Eq. 1): one worker builds the Eq. 1 and the
Eq. 3 step on the same W and alternates them, swapping their order every pair, so each
adjacent pair gives one Eq. 3 / Eq. 1 ratio free of the spread between processes.

  python benchmarks/bench_classifier.py --virtual_devices=4 --num_instances=262144 \
      --batch_size=1024 --json=bench_out/classifier_t4.json
  python benchmarks/bench_classifier.py --paired --virtual_devices=1 --layouts=sharded \
      --smoothing=0.2 --num_hard=100 --steps=10 --repeats=3
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags, logging

import harness

FLAGS = flags.FLAGS
flags.DEFINE_list("layouts", ["sharded", "replicated"], "Layouts of W to benchmark.")
flags.DEFINE_integer("virtual_devices", 4, "T virtual CPU devices; 0 = real local devices.")
flags.DEFINE_integer("num_instances", 262144, "N, rows of W (instances).")
flags.DEFINE_integer("dim", 128, "D, embedding dimension.")
flags.DEFINE_integer("batch_size", 1024, "B, embeddings per step.")
flags.DEFINE_list("chunk_size", ["0"], "Loss chunk sizes to try; 0 = unchunked.")
flags.DEFINE_list("reductions", ["none"], "The loss's reduction to time: none (the [B] "
                  "losses, then their mean: two passes when chunked) and / or mean (one "
                  "pass when chunked; see instance_classification_loss).")
flags.DEFINE_float("smoothing", 0.0, "alpha; > 0 also draws --num_hard random hard negatives.")
flags.DEFINE_integer("num_hard", 100, "K hard negatives per example when smoothing > 0.")
flags.DEFINE_integer("steps", 5, "Timed steps per configuration.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing, allocation).")
flags.DEFINE_integer("repeats", 1, "Fresh worker processes per configuration; the reported "
                     "step time is the median of their medians (all kept in step_ms_runs).",
                     lower_bound=1)
flags.DEFINE_integer("matmul_size", 4096, "Side of the square matmul used to measure peak.")
flags.DEFINE_float("budget_gib", 16.0, "Per-device memory budget for the largest-N estimate.")
flags.DEFINE_enum("cpu_allocator", "bfc", ["bfc", "default"],
                  "CPU runs: 'bfc' sets TF_CPU_ALLOCATOR_USE_BFC=true in each worker (TF's "
                  "BFC allocator, whose allocation events --trace_memory_mib reads); "
                  "'default' keeps TF's own CPU allocator (oneDNN's on x86). Both report "
                  "alloc_peak_bytes.")
flags.DEFINE_float("trace_memory_mib", 0.0,
                   "Diagnostic: if > 0, profile one more step and record (live_at_peak) the "
                   "buffers of at least this many MiB alive at the step's allocation peak, "
                   "with the op that made each (needs a BFC allocator: GPU, or "
                   "--cpu_allocator=bfc).")
flags.DEFINE_list("disable_grappler", [], "Diagnostic: grappler passes to turn off for the "
                  "step (names of tf.config.optimizer.set_experimental_options, e.g. "
                  "arithmetic_optimization), or 'all' for the whole optimizer.")
flags.DEFINE_bool("paired", False, "Issue 17 item 2: instead of the table, time Eq. 1 and "
                  "Eq. 3 (--smoothing > 0, --num_hard) steps alternately in each of --repeats "
                  "workers (first --layouts / --chunk_size / --reductions value) and report "
                  "the Eq. 3 / Eq. 1 ratio of each adjacent pair.")
flags.DEFINE_string("json", None, "Write the list of records to this path.")
flags.DEFINE_bool("torch_peer", True, "Also time the step in PyTorch on one device if importable.")
flags.DEFINE_list("torch_peers", ["eager", "compile"], "PyTorch peers to time (with "
                  "--torch_peer): eager, and / or compile (torch.compile of the loss and "
                  "of the optimizer step, Inductor's C++ backend on CPU).")
flags.DEFINE_string("torch_python", None, "Python interpreter whose torch runs the peers "
                    "(default: this one); it needs torch and absl-py, not TensorFlow.")
flags.DEFINE_string("worker", None, "Internal: run one configuration (JSON) and print a record.")

_FLOAT = 4
# Buffers alive at the peak of a step, measured with the allocator statistic
# two [c, N/T] logits-sized buffers (exp(z) and the label
# matrix, the residual reusing exp's buffer) and five [N/T, D] ones (W, its momentum,
# the normalised W, the dW sum and one chunk's dW).
_LOGITS_BUFFERS = 2
_ROW_BUFFERS = 5


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- worker side (one configuration per process) ---------------------------------------


def _matmul_peak(size: int, repeats: int = 10) -> float:
    """Best float32 GFLOP/s of square matmuls (side ``size`` and ``size // 2``)."""
    import tensorflow as tf

    best = 0.0
    for n in (size, size // 2):
        a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
        tf.matmul(a, b).numpy()
        for _ in range(repeats):
            start = time.perf_counter()
            tf.matmul(a, b).numpy()
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def build_steps(config: dict, mesh):
    """(make_step, x, ids, hard, W, its optimizer) of one benchmark configuration: W
    [N, D] on ``mesh`` in ``config["layout"]``, standard-normal embeddings, random ids and (when
    smoothing > 0) K random hard negatives per row; ``make_step(smoothing)`` is a
    tf.function running the loss, its gradient and a momentum-SGD step of W."""
    import numpy as np
    import tensorflow as tf

    from tf_instcls import parallel
    from tf_instcls.losses import instance_classification_loss
    from tf_instcls.training import MomentumSGD

    n, d, b = config["num_instances"], config["dim"], config["batch_size"]
    chunk = config["chunk_size"] or None
    clf = parallel.InstanceClassifier(
        n, d, mesh=mesh, layout=config["layout"], chunk_size=chunk, init_stddev=0.01
    )
    w = clf.class_weights
    opt = MomentumSGD(momentum=0.9, weight_decay=1e-4)
    opt.build([w])
    rng = np.random.default_rng(0)
    x = parallel.pack_sharded(rng.normal(size=(b, d)).astype(np.float32),
                              parallel.batch_layout(mesh, 2))
    ids = parallel.pack_sharded(rng.integers(0, n, b).astype(np.int32),
                                parallel.batch_layout(mesh, 1))
    hard = None
    if config["smoothing"] > 0:
        hard = parallel.pack_sharded(
            rng.integers(0, n, (b, config["num_hard"])).astype(np.int32),
            parallel.batch_layout(mesh, 2),
        )

    def make_step(smoothing):
        @tf.function
        def step(x, ids, hard):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = instance_classification_loss(
                    x, ids, w, hard_negatives=hard, smoothing=smoothing,
                    chunk_size=chunk, valid_classes=n, reduction=config.get("reduction", "none"),
                )
                mean = tf.reduce_mean(loss)
            grad_x, grad_w = tape.gradient(mean, [x, w])
            opt.apply_gradients([(grad_w, w)], 0.1)
            return mean, tf.reduce_sum(grad_x)
        return step

    return make_step, x, ids, hard, w, opt


def _run_worker(config: dict) -> dict:
    if config["kind"] == "torch":  # before TensorFlow: the peer's interpreter may lack it
        return _torch_step(config)
    from tf_instcls import parallel

    devices = config["devices"]
    if config["kind"] != "peak" and devices > 0:
        parallel.configure_virtual_devices(devices)
    import tensorflow as tf

    if config["kind"] == "peak":
        return {"matmul_peak_gflops": _matmul_peak(config["matmul_size"])}

    from tf_instcls.parallel import layouts

    passes = config.get("disable_grappler") or []
    if "all" in passes:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    elif passes:
        tf.config.optimizer.set_experimental_options({name: False for name in passes})
    base_rss = _rss_bytes()
    mesh = parallel.build_mesh(devices or None)
    t = mesh.size
    n, d, b = config["num_instances"], config["dim"], config["batch_size"]
    chunk = config["chunk_size"] or None
    make_step, x, ids, hard, w, opt = build_steps(config, mesh)

    if config["kind"] == "paired":
        return _time_pairs(config, make_step, x, ids, hard)
    step = make_step(config["smoothing"])
    for _ in range(config["warmup"]):
        step(x, ids, hard)[0].numpy()
    # Physical devices of the allocator statistics: CPU:0 holds all virtual CPUs.
    physical = tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("CPU")
    before = _allocator_stats(physical)
    _reset_allocator_peak(physical)
    times = []
    for _ in range(config["steps"]):
        start = time.perf_counter()
        step(x, ids, hard)[0].numpy()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    after = _allocator_stats(physical)
    rss_after_steps = _rss_bytes()  # before the matmul-peak measurement allocates
    live_at_peak = None
    if config.get("trace_memory_mib"):
        live_at_peak = _trace_step_memory(lambda: step(x, ids, hard)[0].numpy(),
                                          config["trace_memory_mib"])
    worker_peak = _matmul_peak(config.get("matmul_size", 4096))
    w_local = layouts.local_shapes(w.layout, w.shape)
    slot = opt.slot_for(w)
    assert slot.layout.sharding_specs == w.layout.sharding_specs, "slot layout != W layout"
    # Rows of one [rows, N/T] logits buffer per device: the whole (replicated) batch or a
    # chunk of it for sharded W; the device's batch slice (or its chunk) for replicated W.
    rows_per_chunk = b if chunk is None else min(b, chunk)
    logit_rows = rows_per_chunk if config["layout"] == "sharded" else max(1, rows_per_chunk // t)
    logit_cols = w_local[0]
    w_bytes = w_local[0] * w_local[1] * _FLOAT
    logits_bytes = logit_rows * logit_cols * _FLOAT
    return {
        "layout": config["layout"],
        "devices": t,
        "num_instances": n,
        "dim": d,
        "batch_size": b,
        "chunk_size": chunk or 0,
        "reduction": config.get("reduction", "none"),
        "smoothing": config["smoothing"],
        "step_ms_median": 1000 * median,
        "step_ms_all": [1000 * s for s in times],
        "per_device_bytes": 3 * w_bytes + logits_bytes,
        "per_device_bytes_parts": {
            "W": w_bytes, "W_grad": w_bytes, "W_momentum": w_bytes, "logits": logits_bytes,
        },
        "peak_rss_bytes": rss_after_steps,
        "peak_rss_delta_bytes": rss_after_steps - base_rss,
        # Summed over the devices (all T virtual CPUs share one allocator); None when the
        # allocator keeps no statistics.
        "alloc_resident_bytes": before and before["current"],
        "alloc_peak_bytes": after and after["peak"],
        "cpu_allocator": config.get("cpu_allocator", "default"),
        "live_at_peak": live_at_peak,
        "gflops": 6 * b * n * d / median / 1e9,
        "worker_matmul_peak_gflops": worker_peak,
        "loss": float(step(x, ids, hard)[0].numpy()),
    }


def _time_pairs(config: dict, make_step, x, ids, hard) -> dict:
    """Eq. 1 and Eq. 3 steps on the same W, alternating in one process (item
    2): pair i times both, in the order Eq. 1, Eq. 3 for even i and reversed for odd i,
    so a drift in the machine's speed hits both; each pair gives one Eq. 3 / Eq. 1
    ratio. Separate processes differ by up to 20% here, more than the 5% in question."""
    steps = {"eq1": (make_step(0.0), None), "eq3": (make_step(config["smoothing"]), hard)}

    def run(name):
        step, negatives = steps[name]
        return float(step(x, ids, negatives)[0].numpy())

    for _ in range(config["warmup"]):
        for name in steps:
            run(name)
    ms = {"eq1": [], "eq3": []}
    losses = {}
    for i in range(config["steps"]):
        for name in ("eq1", "eq3") if i % 2 == 0 else ("eq3", "eq1"):
            start = time.perf_counter()
            losses[name] = run(name)
            ms[name].append(1000 * (time.perf_counter() - start))
    ratios = [b / a for a, b in zip(ms["eq1"], ms["eq3"])]
    return {
        "layout": config["layout"], "devices": config["devices"],
        "num_instances": config["num_instances"], "dim": config["dim"],
        "batch_size": config["batch_size"], "chunk_size": config["chunk_size"] or 0,
        "smoothing": config["smoothing"], "num_hard": config["num_hard"],
        "eq1_ms": ms["eq1"], "eq3_ms": ms["eq3"], "ratios": ratios,
        "ratio_median": statistics.median(ratios),
        "eq1_ms_median": statistics.median(ms["eq1"]),
        "eq3_ms_median": statistics.median(ms["eq3"]),
        "loss_eq1": losses["eq1"], "loss_eq3": losses["eq3"],
    }


def _write_json(records: list) -> None:
    if FLAGS.json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
        with open(FLAGS.json, "w") as f:
            json.dump(records, f, indent=1)
        print(f"wrote {FLAGS.json}")


def _paired(base_config: dict) -> None:
    """--paired: --repeats workers, each alternating Eq. 1 and Eq. 3 steps."""
    if FLAGS.smoothing <= 0:
        raise app.UsageError("--paired compares Eq. 1 with Eq. 3: set --smoothing > 0 "
                             "(the paper's 0.2) and --num_hard (its 100)")
    config = dict(base_config, kind="paired", layout=FLAGS.layouts[0],
                  chunk_size=int(FLAGS.chunk_size[0]), reduction=FLAGS.reductions[0])
    records = []
    for repeat in range(FLAGS.repeats):
        record = _spawn(config)
        if "error" in record:
            raise RuntimeError(f"paired worker {repeat + 1} failed: {record}")
        records.append(record)
        print(f"worker {repeat + 1}: Eq. 1 {record['eq1_ms_median']:.0f} ms, Eq. 3 "
              f"{record['eq3_ms_median']:.0f} ms (medians of {len(record['ratios'])}); Eq. 3 / "
              f"Eq. 1 per pair: median {record['ratio_median']:.3f}, range "
              f"{min(record['ratios']):.3f}-{max(record['ratios']):.3f}")
    ratios = sorted(r for record in records for r in record["ratios"])
    quart = len(ratios) // 4
    print(f"all {len(ratios)} pairs: Eq. 3 / Eq. 1 median {statistics.median(ratios):.3f}, "
          f"interquartile {ratios[quart]:.3f}-{ratios[-1 - quart]:.3f}")
    _write_json(records)


def _torch_step(config: dict) -> dict:
    """The same Eq. 1 step in PyTorch: normalize, cosine logits / tau, cross-entropy,
    backward, SGD with momentum 0.9 and weight decay; eager, or with the loss and the
    optimizer step under ``torch.compile`` (``config["torch_mode"]``)."""
    import numpy as np
    import torch

    base_rss = _rss_bytes()
    mode = config.get("torch_mode", "eager")
    n, d, b = config["num_instances"], config["dim"], config["batch_size"]
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(n, d, generator=g) * 0.01)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(b, d, generator=g, requires_grad=True)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, n, b))

    def loss_fn(x, w, ids):
        z = torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(w).t() / 0.15
        return torch.nn.functional.cross_entropy(z, ids)

    update = opt.step
    if mode == "compile":
        loss_fn = torch.compile(loss_fn)
        update = torch.compile(opt.step)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x, w, ids)
        loss.backward()
        update()
        return loss.item()

    start = time.perf_counter()
    for _ in range(config["warmup"]):  # compile's tracing and code generation happen here
        step()
    warmup_seconds = time.perf_counter() - start
    times = []
    for _ in range(config["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "layout": f"torch-{mode}", "devices": 1, "num_instances": n, "dim": d,
        "batch_size": b, "chunk_size": 0, "reduction": "mean", "smoothing": 0.0,
        "step_ms_median": 1000 * median, "step_ms_all": [1000 * s for s in times],
        "warmup_seconds": warmup_seconds,
        "gflops": 6 * b * n * d / median / 1e9, "peak_rss_bytes": _rss_bytes(),
        "peak_rss_delta_bytes": _rss_bytes() - base_rss,
        "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
    }


# -- driver side -----------------------------------------------------------------------


def _allocator_names(devices) -> list:
    """'CPU:0' / 'GPU:1' ... of physical devices, as the memory-info API names them."""
    return sorted({d.name.split("physical_device:")[-1] for d in devices})


def _allocator_stats(devices) -> dict | None:
    """Summed ``current`` / ``peak`` bytes of the local devices' allocators, or None
    where an allocator keeps no statistics."""
    import tensorflow as tf

    total = {"current": 0, "peak": 0}
    for name in _allocator_names(devices):
        try:
            info = tf.config.experimental.get_memory_info(name)
        except (ValueError, tf.errors.OpError):
            return None
        total = {k: total[k] + info[k] for k in total}
    return total


def _reset_allocator_peak(devices) -> None:
    import tensorflow as tf

    for name in _allocator_names(devices):
        try:
            tf.config.experimental.reset_memory_stats(name)
        except (ValueError, tf.errors.OpError):
            return


def _trace_step_memory(run_step, min_mib: float) -> dict:
    """Runs one step under TF's profiler and returns the buffers of at least ``min_mib``
    MiB that were alive when the bytes this step allocated peaked, from the allocator's
    MemoryAllocation / MemoryDeallocation events (BFC allocators record them: the GPU's,
    and the CPU's with --cpu_allocator=bfc). Buffers that existed before the step (W,
    its momentum) are not in the list; ``peak_step_bytes`` counts only the step's own."""
    import glob
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="bench_trace_")
    tf.profiler.experimental.start(logdir)
    run_step()
    tf.profiler.experimental.stop()
    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(paths[0], "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                kind = plane.event_metadata[event.metadata_id].name
                if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {}
                for stat in event.stats:
                    key = plane.stat_metadata[stat.metadata_id].name
                    stats[key] = stat.str_value or stat.int64_value or stat.uint64_value
                    if stat.ref_value:
                        stats[key] = plane.stat_metadata[stat.ref_value].name
                events.append((line.timestamp_ns * 1000 + event.offset_ps, kind, stats))
    events.sort(key=lambda e: e[0])
    live, current, peak, at_peak = {}, 0, 0, {}
    for _, kind, stats in events:
        address = stats.get("addr")
        if kind == "MemoryAllocation":
            size = int(stats.get("requested_bytes") or 0)
            live[address] = (size, stats.get("tf_op"), stats.get("shape"))
            current += size
        elif address in live:
            current -= live.pop(address)[0]
        if current > peak:
            peak, at_peak = current, dict(live)
    buffers = sorted((v for v in at_peak.values() if v[0] >= min_mib * 2**20), reverse=True)
    return {
        "allocation_events": len(events),
        "peak_step_bytes": peak,
        "buffers": [{"mib": round(size / 2**20, 1), "op": str(op).split("/")[-1],
                     "shape": shape} for size, op, shape in buffers],
    }


def _torch_peers() -> list:
    """[("torch-eager", 0, "mean"), ...]: the --torch_peers whose torch imports in
    --torch_python; none (with a log line) when it does not."""
    if not FLAGS.torch_peer:
        return []
    for mode in FLAGS.torch_peers:
        if mode not in ("eager", "compile"):
            raise app.UsageError(f"--torch_peers: {mode!r} is not eager or compile")
    python = FLAGS.torch_python or sys.executable
    probe = subprocess.run([python, "-c", "import torch, absl"], capture_output=True, text=True)
    if probe.returncode:
        logging.info("torch (with absl-py) does not import in %s: no PyTorch peer. Set "
                     "--torch_python to an interpreter that has them.", python)
        return []
    return [(f"torch-{mode}", 0, "mean") for mode in FLAGS.torch_peers]


def _spawn(config: dict, python: str | None = None) -> dict:
    env = harness.subprocess_env()
    if config.get("cpu_allocator") == "bfc":
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"  # read once, when TensorFlow starts
    proc = subprocess.run(
        [python or sys.executable, os.path.abspath(__file__), f"--worker={json.dumps(config)}"],
        env=env, capture_output=True, text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RECORD "):
            return json.loads(line[len("RECORD "):])
    tail = (proc.stderr or proc.stdout)[-1500:]
    return {"error": f"worker exited {proc.returncode}", "stderr_tail": tail, **config}


def largest_n(layout: str, devices: int, dim: int, batch: int, chunk: int, budget: float) -> int:
    """Largest N whose per-device bytes (same model as the records) fit ``budget`` bytes.

    sharded:    5 (N/T) D 4 + rows (N/T) 4 * 2,  rows = chunk or B
    replicated: 6 N D 4 (incl. the all-reduce buffer of W's gradient)
                + (rows / T) N 4 * 2
    """
    rows = chunk or batch
    if layout == "sharded":
        per_row = (_ROW_BUFFERS * dim + rows * _LOGITS_BUFFERS) * _FLOAT / devices
    else:
        per_row = ((_ROW_BUFFERS + 1) * dim + max(1, rows // devices) * _LOGITS_BUFFERS) * _FLOAT
    return int(budget // per_row)


def _markdown(records) -> str:
    head = ("| layout (reduction) | T | N | D | B | chunk | step ms (median) | per-device MiB "
            "(W+grad+slot+logits) | alloc peak MiB | peak RSS growth MiB | GFLOP/s | "
            "% of matmul peak |")
    lines = [head, "|" + "---|" * 12]
    for r in records:
        if "error" in r:
            lines.append(f"| {r.get('layout')} | {r.get('devices')} | {r.get('num_instances')} "
                         f"| | | {r.get('chunk_size')} | **{r['error']}** | | | | | |")
            continue
        per_dev = r.get("per_device_bytes")
        lines.append(
            f"| {r['layout']} ({r.get('reduction', 'none')}) | {r['devices']} | "
            f"{r['num_instances']} | {r['dim']} | "
            f"{r['batch_size']} | {r['chunk_size'] or '-'} | {r['step_ms_median']:.0f} | "
            f"{per_dev / 2**20:.1f} | " if per_dev else
            f"| {r['layout']} | {r['devices']} | {r['num_instances']} | {r['dim']} | "
            f"{r['batch_size']} | - | {r['step_ms_median']:.0f} | n/a | "
        )
        alloc = r.get("alloc_peak_bytes")
        rss = r.get("peak_rss_delta_bytes", r["peak_rss_bytes"])
        lines[-1] += (f"{alloc / 2**20:.0f} | " if alloc else "n/a | ")
        lines[-1] += (f"{rss / 2**20:.0f} | {r['gflops']:.1f} | "
                      f"{100 * r['gflops'] / r['matmul_peak_gflops']:.0f}% |")
    return "\n".join(lines)


def _combine_runs(runs: list) -> dict:
    """One configuration's records from --repeats worker processes: the first run's
    record, with ``step_ms_median`` the median of the runs' medians (``step_ms_runs``
    lists them). On a small shared machine one process' timing can be off by 20%."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    record = runs[0]
    if len(runs) > 1:
        record["step_ms_runs"] = [r["step_ms_median"] for r in runs]
        record["step_ms_median"] = statistics.median(record["step_ms_runs"])
        record["gflops"] = (6 * record["batch_size"] * record["num_instances"] * record["dim"]
                            / record["step_ms_median"] * 1e-6)
    return record


def main(argv):
    del argv
    if FLAGS.worker:
        print("RECORD " + json.dumps(_run_worker(json.loads(FLAGS.worker))), flush=True)
        return
    for layout in FLAGS.layouts:
        if layout not in ("sharded", "replicated"):
            raise app.UsageError(f"--layouts: unknown layout {layout!r}")
    chunks = [int(c) for c in FLAGS.chunk_size]
    if any(c < 0 for c in chunks):
        raise app.UsageError("--chunk_size values must be >= 0")
    for reduction in FLAGS.reductions:
        if reduction not in ("none", "mean"):
            raise app.UsageError(f"--reductions: {reduction!r} is not none or mean")
    records = []
    base_config = dict(kind="step", devices=FLAGS.virtual_devices, matmul_size=FLAGS.matmul_size,
                  num_instances=FLAGS.num_instances, dim=FLAGS.dim,
                  batch_size=FLAGS.batch_size, smoothing=FLAGS.smoothing,
                  num_hard=FLAGS.num_hard, steps=FLAGS.steps, warmup=FLAGS.warmup,
                  disable_grappler=FLAGS.disable_grappler, cpu_allocator=FLAGS.cpu_allocator,
                  trace_memory_mib=FLAGS.trace_memory_mib)
    if FLAGS.paired:
        _paired(base_config)
        return
    peak = _spawn({"kind": "peak", "devices": 0, "matmul_size": FLAGS.matmul_size})
    if "error" in peak:
        raise RuntimeError(f"matmul peak measurement failed: {peak}")
    logging.info("float32 matmul peak: %.1f GFLOP/s", peak["matmul_peak_gflops"])
    configs = [(layout, chunk, reduction) for layout in FLAGS.layouts for chunk in chunks
               for reduction in FLAGS.reductions]
    peers = _torch_peers()
    runs = {config: [] for config in configs + peers}
    for repeat in range(FLAGS.repeats):  # interleaved, so slow spells hit every config
        for layout, chunk, reduction in configs + peers:
            logging.info("running layout=%s chunk=%s reduction=%s (run %d of %d) ...", layout,
                         chunk, reduction, repeat + 1, FLAGS.repeats)
            if layout.startswith("torch-"):
                config = dict(base_config, kind="torch", torch_mode=layout[len("torch-"):])
                runs[(layout, chunk, reduction)].append(_spawn(config, FLAGS.torch_python))
                continue
            config = dict(base_config, layout=layout, chunk_size=chunk, reduction=reduction)
            if repeat:  # the record keeps the first run's trace: trace only once
                config["trace_memory_mib"] = 0.0
            runs[(layout, chunk, reduction)].append(_spawn(config))
    for layout, chunk, reduction in configs + peers:
        record = _combine_runs(runs[(layout, chunk, reduction)])
        # The peak is the best of the driver's and the worker's own measurement.
        record["matmul_peak_gflops"] = max(
            peak["matmul_peak_gflops"], record.get("worker_matmul_peak_gflops", 0.0)
        )
        if "error" not in record and not layout.startswith("torch-"):
            record["largest_n_in_budget"] = largest_n(
                layout, record["devices"], FLAGS.dim, FLAGS.batch_size, chunk,
                FLAGS.budget_gib * 2**30,
            )
            record["budget_gib"] = FLAGS.budget_gib
        records.append(record)
        logging.info("%s", {k: v for k, v in record.items() if k != "step_ms_all"})
    print(_markdown(records))
    for r in records:
        trace = r.get("live_at_peak")
        if trace:
            print(f"\nlayout={r['layout']} chunk={r['chunk_size'] or '-'} reduction="
                  f"{r.get('reduction', 'none')}: the step's own "
                  f"allocations peak at {trace['peak_step_bytes'] / 2**20:.0f} MiB; alive then:")
            for buf in trace["buffers"]:
                print(f"  {buf['mib']:8.1f} MiB  {buf['shape']}  {buf['op']}")
    fit = [r for r in records if "largest_n_in_budget" in r]
    if fit:
        print(f"\nLargest N in {FLAGS.budget_gib} GiB per device (model above, Fig. 3 analogue):")
        for r in fit:
            print(f"  {r['layout']:>10} T={r['devices']} chunk={r['chunk_size'] or '-'}: "
                  f"{r['largest_n_in_budget']:,}")
    _write_json(records)


if __name__ == "__main__":
    app.run(main)
