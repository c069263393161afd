"""One evaluator API: ``evaluator.run(model, splits) -> {representation: {metric: value}}``.

``model`` is anything with ``features(source) -> {representation: [n, F] array}``,
``describe() -> dict`` and ``name`` (:class:`eval.common.EvalModel`, a checkpoint or an
export on the mesh; :class:`eval.common.RawPixels`; the kNN monitor's live encoder);
evaluators that train through the network also read ``encoder``, ``image_size`` and
``mesh`` (None for raw pixels). ``splits`` is a :class:`data.LabelledSplits`. The
runner (``eval/runner.py``) adds the baselines, the feature cache and the report; the
tools are thin binaries around both.

To add an evaluator: a class with ``name``, ``describe()`` (its protocol, written to
the report) and ``run(model, splits)``; ``tests/test_evaluators.py`` shows one.
"""

from __future__ import annotations

import dataclasses
import hashlib

from tf_instcls import defaults
from tf_instcls.eval import analysis
from tf_instcls.eval.common import FEATURE_KINDS
from tf_instcls.eval.knn import knn_grid
from tf_instcls.eval.linear import train_linear
from tf_instcls.eval.tables import markdown_table


def _available(wanted, features: dict) -> list:
    """The requested representations the model has; a model with none of them (raw
    pixels) is evaluated on what it has."""
    return [name for name in wanted if name in features] or list(features)


@dataclasses.dataclass(frozen=True)
class KNNEvaluator:
    """Weighted kNN (NPID): the training split is the bank, the evaluation split the
    queries; cosine similarity, k neighbours voting with weight exp(s / temperature).
    With ``grid_ks`` / ``grid_temperatures`` every pair is scored from one search."""

    k: int = defaults.KNN_K
    temperature: float = defaults.KNN_TEMPERATURE
    representations: tuple = FEATURE_KINDS
    grid_ks: tuple = ()
    grid_temperatures: tuple = ()
    name = "knn"
    title = "kNN"
    columns = ()  # (header, result key) beyond model | representation | top-1 | top-5

    def __post_init__(self):
        if self.k < 1 or self.temperature <= 0:
            raise ValueError(f"need k >= 1 and temperature > 0; got k={self.k}, "
                             f"temperature={self.temperature}")

    def describe(self) -> dict:
        return {"k": self.k, "temperature": self.temperature}

    def run(self, model, splits) -> dict:
        bank, queries = model.features(splits.train), model.features(splits.evaluation)
        grid = bool(self.grid_ks or self.grid_temperatures)
        ks = sorted({*self.grid_ks, self.k})
        temperatures = sorted({*self.grid_temperatures, self.temperature})
        out = {}
        for name in _available(self.representations, bank):
            results = knn_grid(bank[name], splits.train.labels, queries[name],
                               splits.evaluation.labels, ks=ks, temperatures=temperatures,
                               num_classes=splits.num_classes)
            main = next(r for r in results if r["k"] == min(self.k, len(bank[name]))
                        and r["temperature"] == self.temperature)
            out[name] = {"top1": main["top1"], "top5": main["top5"], "k": main["k"]}
            if grid:
                out[name]["grid"] = results
        return out

    def markdown(self, entries: list) -> str:
        """The sweep's top-1 as a k x T table per result (when there is a sweep)."""
        md = ""
        for entry in entries:
            if "grid" not in entry:
                continue
            md += f"\n## Sweep: {entry.get('model')} [{entry['representation']}] top-1\n\n"
            temperatures = sorted({r["temperature"] for r in entry["grid"]})
            table: dict = {}
            for r in entry["grid"]:
                table.setdefault(r["k"], {})[r["temperature"]] = r["top1"]
            md += markdown_table(["k \\ T"] + [str(t) for t in temperatures],
                                 [[k] + [table[k][t] for t in temperatures]
                                  for k in sorted(table)])
        return md


def weights_digest(encoder) -> str:
    """A hash of every weight: the frozen-backbone check of linear evaluation."""
    digest = hashlib.sha256()
    for variable in encoder.variables:
        digest.update(variable.path.encode())
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class LinearEvaluator:
    """A softmax classifier on frozen features (SGD + momentum, cosine schedule).

    ``augment="standard"`` recomputes the training features every epoch from a random
    resized crop + flip (BN in inference mode). The backbone's weights are hashed before
    and after: a change raises.
    """

    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    feature_norm: str = "standardize"
    augment: str = "none"
    representation: str = "features"
    feature_batch_size: int = 256
    progress: bool = True
    name = "linear"
    title = "linear"
    columns = (("train top-1", "train_top1"), ("backbone unchanged", "backbone_unchanged"))

    def describe(self) -> dict:
        return {"protocol": {"epochs": self.epochs, "linear_batch_size": self.batch_size,
                             "learning_rate": self.learning_rate, "momentum": self.momentum,
                             "weight_decay": self.weight_decay,
                             "feature_norm": self.feature_norm, "augment": self.augment,
                             "feature": self.representation}}

    def run(self, model, splits) -> dict:
        train_x, eval_x = model.features(splits.train), model.features(splits.evaluation)
        (name,) = _available((self.representation,), train_x)[:1]
        encoder = getattr(model, "encoder", None)
        before = weights_digest(encoder) if encoder is not None else None
        epoch_features = None
        if self.augment == "standard" and encoder is not None:
            from tf_instcls import data as data_lib
            from tf_instcls.parallel.features import extract_features

            augment = data_lib.supervised_config(model.image_size)

            def epoch_features(epoch):
                return extract_features(encoder, splits.train, model.image_size, model.mesh,
                                        batch_size=self.feature_batch_size, augment=augment,
                                        epoch=epoch, seed=splits.seed)[name]

        result = train_linear(
            train_x[name], splits.train.labels, eval_x[name], splits.evaluation.labels,
            num_classes=splits.num_classes, epochs=self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, momentum=self.momentum,
            weight_decay=self.weight_decay, feature_norm=self.feature_norm,
            seed=splits.seed, epoch_features=epoch_features, progress=self.progress)
        result.pop("weights"), result.pop("bias")
        if encoder is not None:
            result["backbone_unchanged"] = weights_digest(encoder) == before
            if not result["backbone_unchanged"]:
                raise RuntimeError("the backbone's weights changed during linear evaluation")
        return {name: result}


@dataclasses.dataclass(frozen=True)
class FinetuneEvaluator:
    """Fine-tunes the whole network with a classifier on L2-normalised pooled features
    (the paper's semi-supervised protocol) on ``splits.train``, the labelled images.
    A model without an encoder (raw pixels) gets a linear classifier on its
    standardised features instead (100 epochs, batch 256, lr 0.1)."""

    label_fraction: float = 0.1
    epochs: int = 30
    batch_size: int = 256
    backbone_lr: float = 0.001
    classifier_lr: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    name = "finetune"
    title = "fine-tuned"
    columns = ()

    def describe(self) -> dict:
        return {"label_fraction": self.label_fraction}

    def run(self, model, splits) -> dict:
        if getattr(model, "encoder", None) is None:
            features = model.features(splits.train)
            (name,) = list(features)[:1]
            result = train_linear(
                features[name], splits.train.labels, model.features(splits.evaluation)[name],
                splits.evaluation.labels, num_classes=splits.num_classes, epochs=100,
                batch_size=256, learning_rate=0.1, feature_norm="standardize",
                seed=splits.seed, progress=False)
            result.pop("weights"), result.pop("bias")
            return {f"{name} (linear)": result}
        from tf_instcls.eval import finetune as ft

        print(f"fine-tuning {model.name} on {splits.train.num_images} labelled images",
              flush=True)
        return {"finetuned": ft.finetune(
            model.encoder, splits.train, splits.evaluation, model.mesh,
            image_size=model.image_size, num_classes=splits.num_classes, epochs=self.epochs,
            batch_size=self.batch_size, backbone_lr=self.backbone_lr,
            classifier_lr=self.classifier_lr, momentum=self.momentum,
            weight_decay=self.weight_decay, seed=splits.seed)}


@dataclasses.dataclass(frozen=True)
class InstanceAccuracyEvaluator:
    """% of the pretraining images (``splits.train``, in the run's id order) whose
    nearest row of W (cosine) is their own: the task the classifier is trained on,
    on the unaugmented view. Needs a model with ``class_weights(n)`` (a run's
    checkpoint)."""

    name = "instance_accuracy"
    title = "instance accuracy"
    columns = (("instance acc", "instance_acc"),)

    def describe(self) -> dict:
        return {}

    def run(self, model, splits) -> dict:
        embedding = model.features(splits.train)["embedding"]
        w = model.class_weights(splits.train.num_images)
        return {"embedding": {"instance_acc": analysis.instance_accuracy(embedding, w)}}

