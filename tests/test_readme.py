"""README's "Pretrain on your own images" commands, run as written on a small generated
folder of JPEGs (only the folder, the run directory and tiny-model flags substituted)."""

import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(__file__))
TINY = ["--epochs=1", "--batch_size=32",
        "--gin_bindings=ModelConfig.backbone_width = 4",
        "--gin_bindings=ModelConfig.head_hidden_dim = 16",
        "--gin_bindings=DataConfig.image_size = 16",
        "--gin_bindings=FullConfig.num_hard_negatives = 8",
        "--gin_bindings=MonitorConfig.k = 10"]


def _section_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Pretrain on your own images", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def _write_jpegs(folder, per_class=40):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        os.makedirs(folder / f"class{c}")
        for i in range(per_class):
            size = int(rng.integers(20, 40))  # mixed sizes, as a real folder
            image = rng.normal(colour, 40, (size, size, 3)).clip(0, 255).astype(np.uint8)
            tf.io.write_file(str(folder / f"class{c}" / f"{i}.jpg"),
                             tf.io.encode_jpeg(image))


@pytest.mark.slow
def test_pretrain_on_your_own_images_commands_run_as_written(tmp_path):
    commands = _section_commands()
    assert [c[1] for c in commands] == ["tools/train.py", "tools/export.py",
                                        "tools/analyze.py"]
    _write_jpegs(tmp_path / "my_images")
    for command in commands:
        assert command[0] == "python"
        args = [a.replace("my_images", str(tmp_path / "my_images"))
                 .replace("runs/mine", str(tmp_path / "mine")) for a in command[2:]]
        if command[1] == "tools/train.py":
            args += TINY
        done = subprocess.run([sys.executable, os.path.join(ROOT, command[1]), *args],
                              env=subprocess_env(), capture_output=True, text=True,
                              timeout=900, cwd=ROOT)
        assert done.returncode == 0, (command, done.stderr[-3000:])
    versions = os.listdir(tmp_path / "mine" / "export")
    assert any(os.path.exists(tmp_path / "mine" / "export" / v / "saved_model.pb")
               for v in versions)
    assert (tmp_path / "mine" / "analysis" / "retrieval.png").stat().st_size > 10_000


def _bash_blocks(section_title):
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split(f"## {section_title}", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_ci_runs_exactly_the_full_test_command_of_the_readme():
    """README's quick start: install + main job, the full suite (what .ci/run runs, word
    for word, after installing), and the fast tier."""
    install, full, fast = _bash_blocks("Quick start")[:3]
    assert install.endswith("&& python tools/train.py")
    assert full == ". .venv/bin/activate && python -m pytest tests -q"
    assert fast == full + ' -m "not slow"'
    ci = open(os.path.join(ROOT, ".ci", "run")).read().strip().splitlines()
    assert ci[-1] == full  # the last thing CI does
