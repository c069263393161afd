"""kNN monitor: weighted kNN top-1 of backbone features on the labelled eval split."""

import keras
from absl import logging

from tf_instcls.eval.features import extract_features
from tf_instcls.eval.knn import weighted_knn


class KNNMonitor(keras.callbacks.Callback):
    """Bank: the training images (their labels used here only), queries: the eval split.

    Cosine similarity, k = 200, weights exp(s / 0.07); BN in inference mode. Adds
    ``knn_top1`` / ``knn_top5`` to the epoch logs.
    """

    def __init__(self, state, k: int = 200, temperature: float = 0.07, every_epochs: int = 1):
        super().__init__()
        self.state = state
        self.k, self.temperature, self.every_epochs = k, temperature, every_epochs

    def evaluate(self) -> dict:
        s = self.state
        bank = extract_features(s.encoder, s.train_source, s.image_size, s.mesh)
        query = extract_features(s.encoder, s.eval_source, s.image_size, s.mesh)
        return weighted_knn(bank["features"], s.train_source.labels, query["features"],
                            s.eval_source.labels, k=self.k, temperature=self.temperature)

    def on_train_begin(self, logs=None):
        if self.state.step == 0:
            result = self.evaluate()
            logging.info("kNN at initialisation: top1 %.2f%%", result["top1"])
            self.initial_top1 = result["top1"]

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.state.epochs
        if logs is None or not (last or (epoch + 1) % self.every_epochs == 0):
            return
        result = self.evaluate()
        found = {"knn_top1": result["top1"], "knn_top5": result["top5"]}
        if hasattr(self, "initial_top1"):
            found["knn_top1_at_init"] = self.initial_top1
        logs.update(found)  # seen by the callbacks after this one (metrics writer, ...)
        self.state.epoch_results.update(found)  # seen by the loop
