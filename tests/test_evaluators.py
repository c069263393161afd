"""One evaluator API: ``run(model, splits) -> {representation:
metrics}``, one runner for baselines and reports, and the kNN monitor running the same
kNN evaluator as ``tools/eval_knn.py``. Also the "how to add an evaluator" recipe of
WORKSPACE.md, exercised."""

import dataclasses
import json

import numpy as np
import pytest

from tf_instcls import models, parallel
from tf_instcls.callbacks import KNNMonitor, geometry
from tf_instcls.data import ImageSource, LabelledSplits
from tf_instcls.eval import evaluators, runner
from tf_instcls.eval.common import RawPixels
from tf_instcls.eval.knn import weighted_knn
from tf_instcls.parallel import layouts
from tf_instcls.parallel.features import extract_features


def _sources(n_train=40, n_eval=12, size=8, seed=0):
    rng = np.random.default_rng(seed)

    def make(n, name):
        labels = np.arange(n) % 3
        images = (labels[:, None, None, None] * 80 + rng.normal(0, 30, (n, size, size, 3)))
        return ImageSource(name=name, num_images=n, image_size=(size, size), labels=labels,
                           images=np.clip(images, 0, 255).astype(np.uint8))

    return make(n_train, "train"), make(n_eval, "eval")


class _FixedModel:
    """A model whose features are given arrays (per source name)."""

    encoder = None

    def __init__(self, features, name="fixed"):
        self._features, self.name = features, name

    def features(self, source):
        return self._features[source.name]

    def describe(self):
        return {"model": self.name}


# -- how to add an evaluator (WORKSPACE.md): one class, then runner.evaluate ----------------
@dataclasses.dataclass(frozen=True)
class NearestClassMean:
    """Top-1 of the nearest class mean (cosine) of the training features."""

    representation: str = "features"
    name = "ncm"
    title = "nearest class mean"
    columns = ()

    def describe(self):
        return {"representation": self.representation}

    def run(self, model, splits):
        train = model.features(splits.train)[self.representation]
        queries = model.features(splits.evaluation)[self.representation]
        means = np.stack([train[splits.train.labels == c].mean(0)
                          for c in range(splits.num_classes)])
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
        guess = np.argmax(unit(queries) @ unit(means).T, axis=1)
        return {self.representation: {
            "top1": float((guess == splits.evaluation.labels).mean() * 100), "top5": 100.0}}


def test_a_new_evaluator_runs_through_the_runner_with_a_report(tmp_path, capsys):
    train, evaluation = _sources()
    splits = LabelledSplits(train, evaluation, seed=0, description={"dataset": "toy"})
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 5)) * 4
    good = _FixedModel({"train": {"features": centres[train.labels] + rng.normal(size=(40, 5))},
                        "eval": {"features": centres[evaluation.labels]
                                 + rng.normal(size=(12, 5))}})
    bad = _FixedModel({"train": {"features": rng.normal(size=(40, 5))},
                       "eval": {"features": rng.normal(size=(12, 5))}}, name="noise")
    record = runner.evaluate(NearestClassMean(), [good, bad], splits, out_dir=str(tmp_path),
                             report="ncm", tool="ncm", heading="# NCM\n\n")
    assert [r["model"] for r in record["results"]] == ["fixed", "noise"]
    top1 = [r["top1"] for r in record["results"]]
    assert top1[0] == 100.0 and top1[1] < 80  # clusters vs noise: the evaluator ran
    saved = json.load(open(tmp_path / "ncm.json"))
    assert saved["tool"] == "ncm" and saved["representation"] == "features"
    assert saved["data"] == {"dataset": "toy"} and len(saved["results"]) == 2
    md = (tmp_path / "ncm.md").read_text()
    assert md.startswith("# NCM") and "| noise | features | " in md
    assert "noise [features]: nearest class mean top-1" in capsys.readouterr().out


def test_knn_evaluator_equals_weighted_knn_and_falls_back_to_raw_pixels():
    train, evaluation = _sources()
    splits = LabelledSplits(train, evaluation)
    rng = np.random.default_rng(2)
    feats = {"train": {"features": rng.normal(size=(40, 6)), "embedding": rng.normal(size=(40, 4))},
             "eval": {"features": rng.normal(size=(12, 6)), "embedding": rng.normal(size=(12, 4))}}
    model = _FixedModel(feats)
    out = evaluators.KNNEvaluator(k=7, temperature=0.1).run(model, splits)
    assert set(out) == {"features", "embedding"}
    for name in out:
        ref = weighted_knn(feats["train"][name], train.labels, feats["eval"][name],
                           evaluation.labels, k=7, temperature=0.1)
        assert out[name]["top1"] == ref["top1"] and out[name]["top5"] == ref["top5"]
    only = evaluators.KNNEvaluator(k=7, representations=("embedding",)).run(model, splits)
    assert set(only) == {"embedding"}
    pixels = evaluators.KNNEvaluator(k=7).run(RawPixels(8), splits)
    ref = weighted_knn(RawPixels(8).features(train)["pixels"], train.labels,
                       RawPixels(8).features(evaluation)["pixels"], evaluation.labels, k=7)
    assert set(pixels) == {"pixels"} and pixels["pixels"]["top1"] == ref["top1"]


def test_labelled_splits_refuse_unlabelled_data():
    train, evaluation = _sources()
    unlabelled = dataclasses.replace(train, labels=None)
    with pytest.raises(ValueError, match="has no labels"):
        LabelledSplits(unlabelled, evaluation)
    assert LabelledSplits(train, evaluation).num_classes == 3
    assert LabelledSplits(train, evaluation, classes=10).num_classes == 10


class _Recording:
    """Wraps an evaluator and keeps what it returned."""

    def __init__(self, inner):
        self.inner, self.results = inner, []

    def run(self, model, splits):
        self.results.append(self.inner.run(model, splits))
        return self.results[-1]


def test_the_knn_monitor_runs_the_evaluator_it_is_given():
    mesh = parallel.build_mesh(2)
    train, evaluation = _sources(size=16)
    encoder = models.build_encoder("convnet_small", 16, embedding_dim=8, head_hidden_dim=8,
                                   backbone_width=4)
    layouts.replicate_model_variables(encoder, mesh)
    classifier = parallel.InstanceClassifier(train.num_images, 8, mesh=mesh, seed=1)

    results = {}
    knn = _Recording(evaluators.KNNEvaluator(k=5, representations=("features",)))
    monitor = KNNMonitor(evaluator=knn, encoder=encoder, classifier=classifier,
                         train_source=train, eval_source=evaluation, image_size=16, mesh=mesh,
                         epochs=lambda: 1, step=lambda: 0, results=results, every_epochs=1)
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert len(knn.results) == 1
    assert logs["knn_top1"] == knn.results[0]["features"]["top1"]
    # the same number as weighted kNN of the features extracted directly
    bank = extract_features(encoder, train, 16, mesh)["features"]
    queries = extract_features(encoder, evaluation, 16, mesh)["features"]
    ref = weighted_knn(bank, train.labels, queries, evaluation.labels, k=5)
    assert logs["knn_top1"] == ref["top1"] and logs["knn_top5"] == ref["top5"]
    assert logs["feat_mean_cos"] == pytest.approx(geometry.geometry_stats("f", bank)["f_mean_cos"])
    assert "w_alignment" in logs and results["knn_top1"] == ref["top1"]
