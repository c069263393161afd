"""kNN monitor: weighted kNN top-1 of backbone features on the labelled eval split."""

import keras
from absl import logging

from tf_instcls import parallel
from tf_instcls.eval import geometry
from tf_instcls.eval.features import extract_features
from tf_instcls.eval.knn import weighted_knn
from tf_instcls.training import stages

_GEOMETRY_MAX_ROWS = 1 << 21  # W is copied to the host for its statistics


class KNNMonitor(keras.callbacks.Callback):
    """Bank: the training images (their labels used here only), queries: the eval split.

    Cosine similarity, k = 200, weights exp(s / 0.07); BN in inference mode. Adds
    ``knn_top1`` / ``knn_top5`` to the epoch logs, and the geometry of the features, the
    embeddings and W (``feat_*``, ``emb_*``, ``w_*``: norms, mean pairwise cosine and
    its 5th / 95th percentiles, ``w_alignment`` = mean cos(w_i, x_i) on the unaugmented
    view), the measurements that show a cone or a W that does not follow the features.
    """

    def __init__(self, state, k: int = 200, temperature: float = 0.07, every_epochs: int = 1):
        super().__init__()
        self.state = state
        self.k, self.temperature, self.every_epochs = k, temperature, every_epochs

    def evaluate(self) -> dict:
        with stages.timed(getattr(self.state, "model_dir", None), "knn",
                          epoch=getattr(self.state, "epoch", None)):
            return self._evaluate()

    def _evaluate(self) -> dict:
        s = self.state
        bank = extract_features(s.encoder, s.train_source, s.image_size, s.mesh)
        query = extract_features(s.encoder, s.eval_source, s.image_size, s.mesh)
        result = weighted_knn(bank["features"], s.train_source.labels, query["features"],
                              s.eval_source.labels, k=self.k, temperature=self.temperature)
        result["geometry"] = self._geometry(bank)
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
