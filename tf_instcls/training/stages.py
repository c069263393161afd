"""Time and memory of each stage of a run, one JSON line per stage in ``stages.jsonl``.

Stages: ``startup`` (data, model, W and the optimizer built; ``restore`` inside it when
resuming), ``prior``, ``mining``, ``knn``, ``checkpoint`` (with the bytes on disk),
``steps`` (per epoch or at a stop: the count and median / 90th-percentile step time, the
first step of a process left out: it traces) and ``export``. Each record also has the
process's resident memory at the end of the stage and its peak so far (``rss_gib``,
``peak_rss_gib``): the peak is monotone, so a stage's own peak is its first record whose
peak is higher than the one before. Process 0 writes; the file is appended to across
resumes, so one file tells a killed and resumed run's whole story.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time

from tf_instcls import parallel

FILENAME = "stages.jsonl"


def memory_gib() -> tuple[float, float]:
    """(resident, peak resident) memory of this process in GiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    rss = peak
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    # the kernel updates the high-water mark lazily: never report a peak below the present
    return rss / 2**30, max(peak, rss) / 2**30


def record(model_dir: str | None, stage: str, seconds: float, **extra) -> dict:
    """Appends one stage's record to ``model_dir/stages.jsonl`` (process 0; no
    model_dir: nothing is written) and returns it."""
    rss, peak = memory_gib()
    entry = {"stage": stage, "seconds": round(seconds, 4), "rss_gib": round(rss, 3),
             "peak_rss_gib": round(peak, 3), "time": round(time.time(), 3), **extra}
    if model_dir and parallel.process_index() == 0:
        os.makedirs(model_dir, exist_ok=True)
        with open(os.path.join(model_dir, FILENAME), "a") as f:
            f.write(json.dumps(entry) + "\n")
    return entry


@contextlib.contextmanager
def timed(model_dir: str | None, stage: str, **extra):
    """Records ``stage`` with its wall time when the block ends; the block may add
    fields to the yielded dict (e.g. bytes written)."""
    fields = dict(extra)
    start = time.perf_counter()
    yield fields
    record(model_dir, stage, time.perf_counter() - start, **fields)


def read(model_dir: str) -> list[dict]:
    """Every record of ``model_dir/stages.jsonl`` in order ([] if there is none)."""
    path = os.path.join(model_dir, FILENAME)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def epoch_loop_times(model_dir: str) -> list[tuple[float, float]]:
    """(wall, steps) seconds of each epoch in the loop but the first two. The wall time
    runs from one epoch's "steps" record to the next's (those records are written when
    an epoch's steps end), so it holds the next epoch's mining, steps and callbacks and
    this epoch's checkpoint; wall - steps is the epoch's overhead. Epoch 0's record is
    left out (it traces), so is the first interval."""
    steps = [(r["time"], r["seconds"]) for r in read(model_dir) if r.get("stage") == "steps"]
    return [(b[0] - a[0], b[1]) for a, b in zip(steps[1:], steps[2:])]


def directory_bytes(path: str, prefix: str = "") -> int:
    """Bytes of the files in ``path`` whose names start with ``prefix``."""
    if not os.path.isdir(path):
        return 0
    return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path)
               if name.startswith(prefix) and os.path.isfile(os.path.join(path, name)))
