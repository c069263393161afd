"""Child processes of the scale benchmarks (run_scale, scale_curve): run one with its own wall
time and peak memory, optionally SIGKILLed on a condition; read and summarise what a
run wrote (steps.jsonl, stages.jsonl)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import harness


def tool_command(tool: str, *args: str) -> list:
    """``python tools/<tool>.py ARGS`` (a user binary) or ``python benchmarks/<tool>.py
    ARGS`` of this checkout."""
    folder = "benchmarks" if os.path.exists(os.path.join(harness.BENCHMARKS, f"{tool}.py")) \
        else "tools"
    return [sys.executable, os.path.join(harness.ROOT, folder, f"{tool}.py"), *args]


def train_command(model_dir: str, dataset: str, *, virtual_devices: int, max_steps: int,
                  batch_size: int | None, gin_files=(), gin_bindings=()) -> list:
    """The scale tools' ``tools/train.py`` command (bindings after the gin files)."""
    return tool_command(
        "train", f"--model_dir={model_dir}", f"--dataset={dataset}",
        f"--virtual_devices={virtual_devices}", f"--max_steps={max_steps}",
        *([f"--batch_size={batch_size}"] if batch_size else []),
        *[f"--gin_file={g}" for g in gin_files],
        *[f"--gin_bindings={b}" for b in gin_bindings])


def export_command(model_dir: str) -> list:
    return tool_command("export", f"--model_dir={model_dir}", "--overwrite")


def run_process(command: list, log_path: str, kill_when=None, poll_s: float = 2.0) -> dict:
    """Runs ``command`` (output to ``log_path``); ``kill_when()`` true: SIGKILL it.
    Returns its wall seconds, peak resident GiB (the child's own), return code."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                env=harness.subprocess_env(), cwd=harness.ROOT)
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if kill_when is not None and not killed and kill_when():
                proc.send_signal(signal.SIGKILL)
                killed = True
            time.sleep(poll_s)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"command": command, "log": log_path, "seconds": time.perf_counter() - start,
            "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30, "returncode": proc.returncode,
            "killed": killed}


def logged_steps(model_dir: str) -> list[dict]:
    path = os.path.join(model_dir, "steps.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def summarise(records: list[dict]) -> dict:
    """Per stage: how often, total and median seconds, the largest peak RSS and bytes."""
    out: dict = {}
    for r in records:
        s = out.setdefault(r["stage"], {"count": 0, "seconds": [], "peak_rss_gib": 0.0})
        s["count"] += 1
        s["seconds"].append(r["seconds"])
        s["peak_rss_gib"] = max(s["peak_rss_gib"], r["peak_rss_gib"])
        if "bytes" in r:
            s["bytes"] = r["bytes"]
        if r["stage"] == "steps":
            s.setdefault("step_medians_s", []).append(r["median_s"])
            s["steps"] = s.get("steps", 0) + r["count"]
    for s in out.values():
        s["total_s"] = sum(s["seconds"])
        s["median_s"] = _upper_median(s.pop("seconds"))
        if "step_medians_s" in s:
            s["step_median_s"] = _upper_median(s.pop("step_medians_s"))
    return out


def _upper_median(values: list) -> float:
    """The middle value (the upper one of an even count)."""
    return sorted(values)[len(values) // 2]
