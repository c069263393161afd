"""kNN monitor: the kNN evaluator's top-1 of backbone features on the labelled eval
split, every few epochs, with the geometry of the features, embeddings and W."""

import keras
from absl import logging

from tf_instcls import parallel
from tf_instcls.data import LabelledSplits
from tf_instcls.parallel.features import extract_features
from tf_instcls.training import geometry, stages

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

    Adds ``knn_top1`` / ``knn_top5`` to the epoch logs, and the geometry of the
    features, the embeddings and W (``feat_*``, ``emb_*``, ``w_*``: norms, mean pairwise
    cosine and its 5th / 95th percentiles, ``w_alignment`` = mean cos(w_i, x_i) on the
    unaugmented view), the measurements that show a cone or a W that does not follow
    the features. Reads ``state``'s encoder, classifier, sources, image size, mesh,
    model_dir, epoch / epochs / step, and writes ``state.epoch_results``.
    """

    def __init__(self, state, evaluator, every_epochs: int = 1):
        super().__init__()
        self.state, self.evaluator, self.every_epochs = state, evaluator, every_epochs

    def evaluate(self) -> dict:
        with stages.timed(getattr(self.state, "model_dir", None), "knn",
                          epoch=getattr(self.state, "epoch", None)):
            return self._evaluate()

    def _evaluate(self) -> dict:
        s = self.state
        model = LiveEncoder(s.encoder, s.image_size, s.mesh)
        result = dict(self.evaluator.run(model, LabelledSplits(s.train_source,
                                                               s.eval_source))["features"])
        result["geometry"] = self._geometry(model.features(s.train_source))
        return result

    def _geometry(self, bank) -> dict:
        stats = {**geometry.geometry_stats("feat", bank["features"]),
                 **geometry.geometry_stats("emb", bank["embedding"])}
        classifier = getattr(self.state, "classifier", None)
        if classifier is not None and classifier.num_instances <= _GEOMETRY_MAX_ROWS:
            w = parallel.to_numpy(classifier.class_weights)[: classifier.num_instances]
            stats.update(geometry.geometry_stats("w", w))
            stats["w_alignment"] = geometry.alignment(w, bank["embedding"])
        return stats

    def on_train_begin(self, logs=None):
        if self.state.step == 0:
            result = self.evaluate()
            logging.info("kNN at initialisation: top1 %.2f%%", result["top1"])
            self.initial_top1 = result["top1"]
            self.initial_geometry = result["geometry"]

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.state.epochs
        if logs is None or not (last or (epoch + 1) % self.every_epochs == 0):
            return
        result = self.evaluate()
        found = {"knn_top1": result["top1"], "knn_top5": result["top5"], **result["geometry"]}
        if hasattr(self, "initial_top1"):
            found["knn_top1_at_init"] = self.initial_top1
            # the geometry at initialisation, once, in the first epoch's record
            found.update({f"init_{k}": v for k, v in self.initial_geometry.items()})
            self.initial_geometry = {}
        logs.update(found)  # seen by the callbacks after this one (metrics writer, ...)
        self.state.epoch_results.update(found)  # seen by the loop
