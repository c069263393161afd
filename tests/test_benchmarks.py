"""The benchmarks and experiment drivers (benchmarks/, not shipped) import, document their
flags and run end to end on tiny inputs (slow). Their numbers are not checked here: the
ones that measure something the library promises have their own tests (bench_classifier,
bench_mining, bench_epochs, run_ablation, soak)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, absl_mains_in_a_child, subprocess_env

BENCHMARKS = pathlib.Path(ROOT) / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py")
                 if p.stem not in ("harness", "processes", "paper_tables"))
TINY = ["--gin_bindings=DataConfig.image_size = 16",
        "--gin_bindings=ModelConfig.backbone_width = 4",
        "--gin_bindings=ModelConfig.head_hidden_dim = 16",
        "--gin_bindings=MonitorConfig.k = 10"]


def _run(script, *args, timeout=900):
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), *map(str, args)],
                          env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, (script, done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


def test_every_benchmark_imports_and_documents_every_flag():
    assert absl_mains_in_a_child(SCRIPTS, path=[BENCHMARKS]) == SCRIPTS


def test_every_library_name_the_benchmarks_import_exists():
    """Their imports inside functions too (the slow runs reach them only end to end)."""
    import ast
    import importlib

    missing = []
    for path in sorted(BENCHMARKS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("tf_instcls")):
                continue
            if node.module.startswith("tf_instcls.cli.") and node.module not in (
                    "tf_instcls.cli.gin_config", "tf_instcls.cli.common"):
                continue  # a binary: it defines its flags at import (test_cli)
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    continue
                try:  # a submodule not imported by its package yet
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ImportError:
                    missing.append(f"{path.name}:{node.lineno} {node.module}.{alias.name}")
    assert not missing, missing


@pytest.mark.slow
def test_encoder_and_step_benchmarks_run_on_a_tiny_model(tmp_path):
    _run("bench_backbone", "--backbone=convnet_small", "--width=4", "--image_size=16",
         "--head_hidden_dim=16", "--batch_sizes=8", "--precisions=float32", "--steps=1",
         "--rounds=1", f"--out={tmp_path / 'backbone.json'}")
    assert json.load(open(tmp_path / "backbone.json"))
    _run("bench_step_parts", "--gin_file=gin/digits.gin", "--dataset=digits", *TINY,
         "--gin_bindings=TrainConfig.batch_size = 32", "--precisions=float32", "--steps=1",
         "--rounds=1", f"--json={tmp_path / 'parts.json'}")
    assert json.load(open(tmp_path / "parts.json"))
    _run("bench_pipeline", "--gin_file=gin/digits.gin", *TINY,
         "--gin_bindings=TrainConfig.batch_size = 32", "--virtual_devices=2", "--batches=2",
         f"--json={tmp_path / 'pipeline.json'}")
    assert json.load(open(tmp_path / "pipeline.json"))


@pytest.mark.slow
def test_bench_vs_torch_times_our_step_and_the_peer_and_reads_each_core(tmp_path):
    """Both BN kernels of ours (and the PyTorch peer where torch is installed) on a tiny
    labelled npz, each core's busy share a fraction."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (160, 16, 16, 3), dtype=np.uint8),
             y=np.arange(160) % 4)
    _run("bench_vs_torch", f"--dataset=npz:{tmp_path / 'data.npz'}", "--side=16", *TINY,
         "--gin_bindings=TrainConfig.batch_size = 32", "--gin_bindings=MonitorConfig.k = 10",
         "--gin_bindings=FullConfig.num_hard_negatives = 8", "--steps=1", "--rounds=1",
         "--torch_workers=0", f"--json={tmp_path / 'torch.json'}")
    rows = {r["config"]: r for r in json.load(open(tmp_path / "torch.json"))["rows"]}
    try:
        import torch  # noqa: F401
        peer = {"pytorch peer float32"}
    except ImportError:
        peer = set()
    assert set(rows) == {"ours float32 bn=auto", "ours float32 bn=closed_form"} | peer
    for row in rows.values():
        assert row["instances_per_sec"] > 0 and len(row["core_busy"]) == os.cpu_count()
        assert all(0 <= c <= 1 for c in row["core_busy"])


def test_busy_share_is_each_cores_busy_jiffies_over_all_of_them():
    import harness  # benchmarks/, on the tests' path

    before = np.array([[100.0, 400.0], [50.0, 400.0]])
    after = np.array([[190.0, 500.0], [60.0, 500.0]])
    assert harness.busy_share(before, after) == [0.9, 0.1]
    assert harness.cpu_times().shape == (os.cpu_count(), 2)


@pytest.mark.slow
def test_run_recipe_and_compare_runs_on_a_tiny_labelled_npz(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    images = (rng.normal(60 + 60 * labels[:, None, None, None], 30, (120, 16, 16, 3))
              .clip(0, 255).astype(np.uint8))
    np.savez(tmp_path / "data.npz", x=images, y=labels)
    out = _run("run_recipe", f"--work_dir={tmp_path / 'recipe'}", f"--data={tmp_path / 'data.npz'}",
               "--seeds=0", *TINY, "--gin_bindings=TrainConfig.time_budget_minutes = 0.0",
               "--gin_bindings=DataConfig.train_image_size = None",
               "--gin_bindings=TrainConfig.epochs = 1",
               "--gin_bindings=TrainConfig.batch_size = 32",
               "--gin_bindings=FullConfig.num_hard_negatives = 8")
    assert "seed" in out
    runs = sorted(p.parent for p in (tmp_path / "recipe").rglob("metrics.jsonl"))
    assert runs
    _run("compare_runs", *[f"--run=r{i}:{d}" for i, d in enumerate(runs + runs)],
         "--metrics=loss", f"--out={tmp_path / 'cmp.png'}")
    assert (tmp_path / "cmp.png").stat().st_size > 1000


@pytest.mark.slow
def test_scale_run_curve_and_projection_on_a_small_synthetic_set(tmp_path):
    _run("run_scale", "--dataset=synthetic:300:16", f"--model_dir={tmp_path / 'scale'}",
         "--gin_file=gin/scale_synthetic.gin", "--virtual_devices=2", "--batch_size=32",
         "--max_steps=4", f"--json={tmp_path / 'scale.json'}")
    assert json.load(open(tmp_path / "scale.json"))
    # N = 300 from the scale run above, N = 600 measured here: a two-point fit
    _run("scale_curve", "--ns=600", f"--reuse=300:{tmp_path / 'scale'}", "--max_steps=4",
         "--batch_size=32", "--virtual_devices=2", "--gin_file=gin/scale_synthetic.gin",
         f"--runs_dir={tmp_path / 'curve_runs'}", f"--out_dir={tmp_path / 'curve'}")
    curve = tmp_path / "curve" / "scale_curve.json"
    assert json.load(open(curve))
    _run("project_scale", f"--curve={curve}", f"--out={tmp_path / 'projection.md'}")
    assert "| " in open(tmp_path / "projection.md").read()


@pytest.mark.slow
def test_check_unchanged_finds_a_checkout_identical_to_itself(tmp_path):
    out = _run("check_unchanged", f"--code_dirs={ROOT},{ROOT}", "--cases=sampled",
               f"--json={tmp_path / 'unchanged.json'}", f"--work_dir={tmp_path}")
    assert "sampled:" in out and "bit-identical" in out
    assert json.load(open(tmp_path / "unchanged.json"))["results"]["sampled"]["identical"]
    assert os.path.exists(tmp_path / "sampled" / "after" / "steps.jsonl")
