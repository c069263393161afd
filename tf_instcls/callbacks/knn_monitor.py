"""kNN monitor: the kNN evaluator's top-1 of backbone features on the labelled eval
split, every few epochs, with the geometry of the features, embeddings and W."""

import time

import keras
from absl import logging

from tf_instcls import parallel
from tf_instcls.callbacks import geometry
from tf_instcls.data import LabelledSplits
from tf_instcls.parallel import preemption
from tf_instcls.parallel.features import extract_features
from tf_instcls.training import stages

_GEOMETRY_MAX_ROWS = 1 << 21  # W is copied to the host for its statistics


class LiveEncoder:
    """The run's encoder as an evaluator's model: features of a source on the mesh (BN
    in inference mode), kept for one evaluation (the geometry reads them again)."""

    name = "live"

    def __init__(self, encoder, image_size: int, mesh):
        self.encoder, self.image_size, self.mesh = encoder, image_size, mesh
        self._memory = {}

    def features(self, source) -> dict:
        if id(source) not in self._memory:
            self._memory[id(source)] = extract_features(self.encoder, source,
                                                        self.image_size, self.mesh)
        return self._memory[id(source)]

    def describe(self) -> dict:
        return {"model": self.name}


class KNNMonitor(keras.callbacks.Callback):
    """Runs ``evaluator`` (``eval.evaluators.KNNEvaluator(k=200, temperature=0.07,
    representations=("features",))`` in a run; any object with ``run(model, splits)``
    returning ``{"features": {"top1", "top5", ...}}``) with the training images as the
    bank (their labels used here only) and the eval split as the queries.

    Adds ``knn_top1`` / ``knn_top5`` to the epoch logs and to ``results`` (the loop's
    dict of this epoch's results), with the geometry of the features, the embeddings
    and W (``feat_*``, ``emb_*``, ``w_*``: norms, mean pairwise cosine and its 5th /
    95th percentiles, ``w_alignment`` = mean cos(w_i, x_i) on the unaugmented view),
    the measurements that show a cone or a W that does not follow the features.
    ``classifier`` may be None (no W statistics); ``epochs()`` is the run's length (the
    last epoch is evaluated), ``step()`` the global step.
    """

    def __init__(self, *, evaluator, encoder, classifier, train_source, eval_source,
                 image_size: int, mesh, epochs, step, results: dict,
                 every_epochs: int = 1, model_dir: str | None = None):
        super().__init__()
        self.evaluator, self.encoder, self.classifier = evaluator, encoder, classifier
        self.splits = LabelledSplits(train_source, eval_source)
        self.image_size, self.mesh, self.epochs = image_size, mesh, epochs
        self.step, self.results = step, results
        self.every_epochs, self.model_dir = every_epochs, model_dir

    def evaluate(self, epoch=None) -> dict:
        """The kNN result and geometry; its wall time goes to ``results["knn_seconds"]``
        (a time budget counts it)."""
        start = time.perf_counter()
        with stages.timed(self.model_dir, "knn", epoch=epoch):
            model = LiveEncoder(self.encoder, self.image_size, self.mesh)
            result = dict(self.evaluator.run(model, self.splits)["features"])
            result["geometry"] = self._geometry(model.features(self.splits.train))
        self.results["knn_seconds"] = time.perf_counter() - start
        return result

    def _geometry(self, bank) -> dict:
        stats = {**geometry.geometry_stats("feat", bank["features"]),
                 **geometry.geometry_stats("emb", bank["embedding"])}
        classifier = self.classifier
        if classifier is not None and classifier.num_instances <= _GEOMETRY_MAX_ROWS:
            w = parallel.to_numpy(classifier.class_weights)[: classifier.num_instances]
            stats.update(geometry.geometry_stats("w", w))
            stats["w_alignment"] = geometry.alignment(w, bank["embedding"])
        return stats

    def _evaluate_unless_stopped(self, epoch):
        """``evaluate``, or None when a stop request (SIGTERM) interrupted it: the
        epoch goes on to its record and checkpoint without a kNN result."""
        try:
            return self.evaluate(epoch=epoch)
        except preemption.StopRequested:
            logging.warning("kNN evaluation of epoch %d interrupted by a stop request", epoch)
            return None

    def on_train_begin(self, logs=None):
        if self.step() == 0:
            result = self._evaluate_unless_stopped(0)
            if result is None:
                return
            logging.info("kNN at initialisation: top1 %.2f%%", result["top1"])
            self.initial_top1 = result["top1"]
            self.initial_geometry = result["geometry"]

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.epochs()  # a time budget's plan may change it
        if logs is None or not (last or (epoch + 1) % self.every_epochs == 0):
            return
        result = self._evaluate_unless_stopped(epoch)
        if result is None:
            return
        found = {"knn_top1": result["top1"], "knn_top5": result["top5"], **result["geometry"],
                 "knn_seconds": self.results["knn_seconds"]}
        if hasattr(self, "initial_top1"):
            found["knn_top1_at_init"] = self.initial_top1
            # the geometry at initialisation, once, in the first epoch's record
            found.update({f"init_{k}": v for k, v in self.initial_geometry.items()})
            self.initial_geometry = {}
        logs.update(found)  # seen by the callbacks after this one (metrics writer, ...)
        self.results.update(found)  # seen by the loop
