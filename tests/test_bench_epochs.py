"""benchmarks/bench_epochs.py: the epoch's wall time in the loop from stages.jsonl (checkpoints
included; stages.epoch_loop_times), and its variants' flags checked before any run."""

import json
import os
import subprocess
import sys

import pytest

from tf_instcls.training import stages

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_epoch_loop_times_span_steps_to_steps_with_the_checkpoint_inside(tmp_path):
    records = [("startup", 1.0, 1.0), ("steps", 10.0, 9.0), ("checkpoint", 10.5, 0.5),
               ("steps", 20.0, 9.0), ("checkpoint", 21.0, 1.0), ("mining", 21.2, 0.2),
               ("steps", 31.0, 9.5), ("steps", 45.0, 13.5)]
    (tmp_path / stages.FILENAME).write_text(
        "".join(json.dumps({"stage": s, "seconds": d, "time": t}) + "\n"
                for s, t, d in records) + "\n")
    # epoch 0 (10.0) and the first interval (10 -> 20) are left out; (wall, steps)
    assert stages.epoch_loop_times(str(tmp_path)) == [(11.0, 9.5), (14.0, 13.5)]


@pytest.mark.parametrize("extra, message", [
    (["--variant_binding=TrainConfig.seed = 1"], "1 given for 2 --code_dirs entries"),
    (["--variant_binding=", "--variant_binding="], "two entries are the same run"),
])
@pytest.mark.slow
def test_variants_are_checked_before_any_run(extra, message):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_epochs.py"),
                          f"--code_dirs={ROOT},{ROOT}", *extra], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
