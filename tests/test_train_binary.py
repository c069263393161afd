"""tools/train.py end to end: a short run, then SIGKILL mid-epoch and an exact resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(__file__))
TINY = [
    "--gin_bindings=DataConfig.image_size = 16",
    "--gin_bindings=ModelConfig.backbone_width = 8",
    "--gin_bindings=ModelConfig.head_hidden_dim = 32",
    "--gin_bindings=TrainConfig.deterministic = True",
    "--gin_bindings=TrainConfig.log_steps = True",
    "--gin_bindings=TrainConfig.checkpoint_every_steps = 5",
    "--gin_bindings=MonitorConfig.k = 20",
    "--epochs=2", "--batch_size=64", "--virtual_devices=2",
]


def _cmd(model_dir, extra=()):
    return [sys.executable, os.path.join(ROOT, "tools", "train.py"), f"--model_dir={model_dir}",
            *TINY, *extra]



def _steps(model_dir):
    path = os.path.join(model_dir, "steps.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_train_prints_knn_writes_metrics_and_resumes_exactly_after_sigkill(tmp_path):
    reference = tmp_path / "reference"
    out = subprocess.run(_cmd(reference), env=subprocess_env(), capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "kNN top-1:" in out.stdout
    metrics = [json.loads(line) for line in open(reference / "metrics.jsonl")]
    assert [m["epoch"] for m in metrics] == [0, 1]
    assert {"epoch", "loss", "instance_acc", "lr", "knn_top1"} <= set(metrics[-1])
    assert (reference / "config.gin").exists() and (reference / "operative_config.gin").exists()
    ref_steps = {s["step"]: s["loss"] for s in _steps(reference)}
    total = max(ref_steps)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed), env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 300
    while time.time() < deadline and not any(s["step"] >= 13 for s in _steps(killed)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _steps(killed)
    assert before and max(s["step"] for s in before) < total, "killed too late to test resume"
    resumed = subprocess.run(_cmd(killed), env=subprocess_env(), capture_output=True, text=True,
                             timeout=600, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _steps(killed)
    logged = [s["step"] for s in after]
    assert len(logged) > len(set(logged)), "steps after the last checkpoint are re-run"
    assert min(logged[len(before):]) % 5 == 1, "resume starts right after a checkpoint"
    final = {s["step"]: s["loss"] for s in after}  # the last value logged for each step
    assert sorted(final) == sorted(ref_steps)
    for step, loss in ref_steps.items():
        assert abs(final[step] - loss) <= 1e-5 * max(1.0, abs(loss)), (step, final[step], loss)


def test_bad_flags_and_bindings_fail_before_any_work(tmp_path):
    bad_binding = subprocess.run(
        _cmd(tmp_path / "x", ["--gin_bindings=TrainConfig.epochz = 3"]), env=subprocess_env(),
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad_binding.returncode != 0 and "epochz" in bad_binding.stderr
    bad_flag = subprocess.run(_cmd(tmp_path / "y", ["--batch_size=0"]), env=subprocess_env(),
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad_flag.returncode != 0 and "batch_size" in bad_flag.stderr
    assert not (tmp_path / "y" / "checkpoints").exists()


# TensorFlow's C++ start-up lines are printed before absl::InitializeLog() and ignore
# TF_CPP_MIN_LOG_LEVEL (abseil-cpp#1957, tensorflow#102212): we cannot silence them (the
# oneDNN notice, CUDA driver probes on a machine without a GPU, CPU feature notes). Only
# those known start-up sources are left out: C++ lines logged later carry the same
# prefix, and any other one counts.
_TF_START_UP = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWE]0000 00:00:\S+\s+\d+ (port|cpu_feature_guard|cudart_stub|cuda_platform"
    r"|cuda_executor|cuda_diagnostics|cuda_dnn|cuda_fft|cuda_blas)\.cc:\d+\])")
_ERROR_LINE = re.compile(r"(E\d{4} |F\d{4} |ERROR|Traceback)")


def _console(out):
    """The run's console lines, TensorFlow's start-up lines left out."""
    return [line for line in (out.stdout + "\n" + out.stderr).split("\n")
            if line.strip() and not _TF_START_UP.match(line)]


def _quiet_run(cmd):
    env = dict(subprocess_env())
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell: the tool sets its default
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_a_healthy_run_prints_a_short_console_with_no_error_line(tmp_path):
    lines = _console(_quiet_run(_cmd(tmp_path / "run")))
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    assert errors == [], errors
    # Progress bars: one self-overwriting bar in a terminal; into a pipe Keras prints
    # their updates as lines, which are not counted. The rest: 6 lines of
    # configuration (run, model, method, train, mesh, output), per epoch "Epoch i/n" and
    # its summary line, the result.
    text = [line for line in lines if "\u2501" not in line and "\x08" not in line]
    assert len(text) == 6 + 2 * 2 + 1, "\n".join(text)
    assert text[2].startswith("  method  full, tau 0.15, Eq. 3: smoothing alpha 0.2, K ")
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert lines[0].startswith("tf_instcls: full on digits (16 px)")
    assert lines[-1].startswith("kNN top-1:")


@pytest.mark.slow
def test_w_sharded_over_devices_that_divide_n_logs_no_cpp_error(tmp_path):
    """W's rows split evenly (N % S == 0, no padding): grappler's cost estimator once
    logged "Incompatible Matrix dimensions" at ERROR level per device, as it took W's
    global shape for a device's (cosine_softmax.CosineSoftmax._row_mask)."""
    out = _quiet_run([sys.executable, os.path.join(ROOT, "tools", "train.py"),
                      f"--model_dir={tmp_path / 'run'}", "--dataset=synthetic:512:16",
                      "--gin_file=" + os.path.join(ROOT, "gin", "scale_synthetic.gin"),
                      "--virtual_devices=4", "--max_steps=2",
                      "--gin_bindings=TrainConfig.batch_size = 64"])
    errors = [line for line in _console(out) if _ERROR_LINE.match(line)]
    assert errors == [], errors
