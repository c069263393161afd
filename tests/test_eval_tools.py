"""Issue 5: evaluation protocols and analysis tools, on made-up data and a tiny run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tf_instcls import models, parallel
from tf_instcls.data import ImageSource, split_holdout
from tf_instcls.eval import analysis, finetune, results
from tf_instcls.eval import common as ec
from tf_instcls.eval.knn import weighted_knn
from tf_instcls.eval.linear import train_linear
from tf_instcls.parallel import layouts

from helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(__file__))



def _tool(name, *args, timeout=600):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), *args],
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_label_subset_is_class_balanced_and_deterministic():
    labels = np.repeat(np.arange(5), [100, 50, 30, 20, 7])
    ids = finetune.label_subset(labels, 0.1, seed=3)
    counts = np.bincount(labels[ids], minlength=5)
    assert counts.tolist() == [10, 5, 3, 2, 1]  # round(0.1 n_c), at least one
    assert np.array_equal(ids, finetune.label_subset(labels, 0.1, seed=3))
    assert not np.array_equal(ids, finetune.label_subset(labels, 0.1, seed=4))
    assert np.all(np.diff(ids) > 0)
    with pytest.raises(ValueError, match="label fraction"):
        finetune.label_subset(labels, 0.0)


def test_imagenet_fractions_use_the_official_tfds_subsets():
    spec = finetune.tfds_subset_spec
    assert spec("tfds:imagenet2012:train", 0.01) == "tfds:imagenet2012_subset/1pct:train"
    assert spec("tfds:imagenet2012", 0.1) == "tfds:imagenet2012_subset/10pct:train"
    assert spec("tfds:imagenet2012", 0.2) is None
    assert spec("tfds:cifar10:train", 0.1) is None


@pytest.mark.parametrize("norm", ["standardize", "l2", "none"])
def test_linear_probe_learns_linearly_separable_features(norm):
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=(20, 4))
    x = rng.normal(size=(600, 20)).astype(np.float32)
    y = np.argmax(x @ w_true, axis=1)
    result = train_linear(x[:500], y[:500], x[500:], y[500:], num_classes=4, epochs=60,
                          batch_size=64, learning_rate=1.0 if norm == "l2" else 0.1,
                          feature_norm=norm, progress=False)
    assert result["top1"] >= 93 and result["train_top1"] >= 95, result["top1"]
    assert result["loss_curve"][-1] < 0.5 * result["loss_curve"][0]


def test_linear_probe_on_shuffled_labels_stays_near_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 20)).astype(np.float32)
    y = rng.integers(0, 4, 600)
    result = train_linear(x[:500], y[:500], x[500:], y[500:], num_classes=4, epochs=30,
                          batch_size=64, learning_rate=0.1, progress=False)
    assert result["top1"] < 45


def test_instance_accuracy_matches_numpy():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(50, 8))
    emb = w + rng.normal(scale=1.5, size=w.shape)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    en = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    expected = (np.argmax(en @ wn.T, axis=1) == np.arange(50)).mean() * 100
    assert 0 < expected < 100
    assert analysis.instance_accuracy(emb, w) == pytest.approx(expected)


def test_results_tables_collect_every_protocol(tmp_path):
    knn = {"tool": "eval_knn", "results": [
        {"model": "run", "representation": "features", "top1": 50.0, "top5": 90.0},
        {"model": "run", "representation": "embedding", "top1": 45.0, "top5": 88.0}]}
    lin = {"tool": "eval_linear", "results": [
        {"model": "run", "representation": "features", "top1": 60.0, "top5": 95.0}]}
    ft = {"tool": "finetune", "label_fraction": 0.1, "results": [
        {"model": "run", "top1": 55.5, "top5": 93.0}]}
    for name, record in (("knn", knn), ("linear", lin), ("ft", ft)):
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    (tmp_path / "label_subset_0.1.json").write_text("{}")  # skipped by the glob
    table = results.collect(results.load_results([str(tmp_path / "*.json")]),
                            {"run": "Ours"})
    assert table == {"Ours": {"knn_top1": 50.0, "knn_top5": 90.0, "knn_top1_embedding": 45.0,
                              "knn_top5_embedding": 88.0, "linear_top1": 60.0,
                              "linear_top5": 95.0, "ft0.1_top1": 55.5, "ft0.1_top5": 93.0}}
    assert "| Ours | 60.00 | 95.00 |" in results.render(table, "table6")
    assert "| Ours | - | - | 55.50 | 93.00 |" in results.render(table, "table7")
    assert "| PIC | 70.80 | 90.00 |" in results.render(table, "table6", with_paper=True)
    with pytest.raises(ValueError, match="not a result"):
        results.load_results([str(tmp_path / "label_subset_0.1.json")])


def test_projector_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3)).astype(np.uint8)
    analysis.write_projector(str(tmp_path), rng.normal(size=(5, 4)), [0, 1, 0, 1, 2], images)
    vectors = np.loadtxt(tmp_path / "vectors.tsv", delimiter="\t")
    assert vectors.shape == (5, 4)
    assert (tmp_path / "metadata.tsv").read_text().count("\n") == 6
    config = (tmp_path / "projector_config.pbtxt").read_text()
    assert 'tensor_path: "vectors.tsv"' in config and "sprite.png" in config


def _colour_source(n=240, size=16, seed=0):
    """4 classes told apart by colour (plus noise): easy for any trained classifier."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]])
    images = colours[labels][:, None, None, :] + rng.normal(0, 25, (n, size, size, 3))
    return ImageSource(name="colours", num_images=n, image_size=(size, size),
                       labels=labels, images=np.clip(images, 0, 255).astype(np.uint8))


@pytest.mark.slow
def test_finetune_on_the_mesh_learns_a_separable_task():
    mesh = parallel.build_mesh(2)
    train, evaluation = split_holdout(_colour_source(), 0.25, seed=0)
    encoder = models.build_encoder("convnet_small", 16, embedding_dim=8, head_hidden_dim=8,
                                   backbone_width=4)
    layouts.replicate_model_variables(encoder, mesh)
    result = finetune.finetune(encoder, train, evaluation, mesh, image_size=16,
                               num_classes=4, epochs=15, batch_size=60, backbone_lr=0.01,
                               classifier_lr=5.0, progress=False)
    assert result["top1"] >= 90, result
    assert result["loss_curve"][-1] < result["loss_curve"][0]
    assert result["steps"] == 15 * 3


@pytest.mark.slow
def test_eval_knn_tool_matches_in_process_numerics(tiny_run, tmp_path):
    model_dir, _ = tiny_run
    out = _tool("eval_knn", f"--model_dir={model_dir}", f"--out_dir={tmp_path}",
                "--baselines", "--grid", "--grid_k=5,20", "--grid_temperature=0.07,0.5",
                "--virtual_devices=2", "--k=20")
    assert "kNN top-1" in out
    record = json.load(open(tmp_path / "knn.json"))
    names = [(r["model"], r["representation"]) for r in record["results"]]
    assert len(names) == 5 and names[-1] == ("raw pixels", "pixels")
    md = (tmp_path / "knn.md").read_text()
    assert "| k \\ T | 0.07 | 0.5 |" in md
    # the same numbers in process, on a 4-device mesh (features do not depend on T)
    mesh = parallel.build_mesh(4)
    model = ec.load_eval_model(model_dir, mesh)
    train, evaluation = ec.labelled_splits(*ec.default_data_args(model, None, None, None,
                                                                 None))
    bank = ec.compute_features(model, train, progress=False)["features"]
    queries = ec.compute_features(model, evaluation, progress=False)["features"]
    ref = weighted_knn(bank, train.labels, queries, evaluation.labels, k=20)
    assert record["results"][0]["top1"] == pytest.approx(ref["top1"], abs=0.4)
    pixels = weighted_knn(ec.raw_pixels(train, 16), train.labels,
                          ec.raw_pixels(evaluation, 16), evaluation.labels, k=20)
    assert record["results"][-1]["top1"] == pytest.approx(pixels["top1"])


@pytest.mark.slow
def test_eval_linear_and_finetune_tools(tiny_run, tmp_path):
    model_dir, _ = tiny_run
    out = _tool("eval_linear", f"--model_dir={model_dir}", f"--out_dir={tmp_path}",
                "--epochs=5", "--augment=standard", "--virtual_devices=2")
    assert "linear top-1" in out
    lin = json.load(open(tmp_path / "linear.json"))["results"][0]
    assert lin["backbone_unchanged"] is True and 0 <= lin["top1"] <= 100
    assert len(lin["loss_curve"]) == 5
    out = _tool("finetune", f"--model_dir={model_dir}", f"--out_dir={tmp_path}",
                "--label_fraction=0.1", "--epochs=2", "--finetune_batch_size=64",
                "--virtual_devices=2")
    subset = json.load(open(tmp_path / "label_subset_0.1.json"))
    source, _ = split_holdout(ec.data_lib.load_source("digits"), 0.15, 0)
    counts = np.bincount(source.labels[subset["ids"]])
    assert counts.max() - counts.min() <= 1 and len(subset["ids"]) == 153
    ft = json.load(open(tmp_path / "finetune_0.1.json"))
    assert ft["results"][0]["num_labelled"] == 153 and ft["results"][0]["steps"] == 4


@pytest.mark.slow
def test_analyze_tool_writes_every_figure(tiny_run, tmp_path):
    model_dir, _ = tiny_run
    _tool("analyze", f"--model_dir={model_dir}", f"--out_dir={tmp_path}", "--knn_k=20",
          "--projector_images=50", "--num_queries=4", "--top_k=5")
    result = json.load(open(tmp_path / "analysis.json"))
    steps = [row["step"] for row in result["correlation"]["checkpoints"]]
    assert steps == [2, 4, 5]
    for row in result["correlation"]["checkpoints"]:
        assert 0 <= row["instance_acc"] <= 100 and 0 <= row["knn_top1"] <= 100
    assert np.array(result["retrieval"]["neighbours"]).shape == (4, 5)
    for name in ("curves.png", "correlation.png", "retrieval.png", "analysis.md",
                 "projector/projector_config.pbtxt", "projector/sprite.png"):
        assert os.path.getsize(tmp_path / name) > 100, name


def test_tools_read_an_export_like_the_model_dir(tiny_run, tmp_path):
    """--export_dir: the Keras encoder written beside the SavedModel gives the same
    features on the mesh as the run's checkpoint."""
    from tf_instcls import export

    model_dir, _ = tiny_run
    restored = export.restore_encoder(model_dir)
    export.export_encoder(restored.encoder, str(tmp_path / "export"),
                          image_size=restored.image_size, step=restored.step,
                          run_info=restored.run_info)
    mesh = parallel.build_mesh(2)
    from_run = ec.load_eval_model(model_dir, mesh)
    from_export = ec.load_eval_model(str(tmp_path / "export"), mesh)
    assert from_export.restored.run_info["dataset"] == "digits"
    _, evaluation = ec.labelled_splits(*ec.default_data_args(from_export, None, None, None,
                                                             None))
    subset = evaluation.subset(np.arange(40), "eval40")
    a = ec.compute_features(from_run, subset, progress=False)
    b = ec.compute_features(from_export, subset, progress=False)
    for key in ("features", "embedding"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5)
