"""metrics.jsonl: one JSON object per epoch (and steps.jsonl per step, optionally)."""

import json
import os

import keras

from tf_instcls import parallel


class MetricsWriter(keras.callbacks.Callback):
    """Writes ``epoch, loss, instance_acc, lr`` (+ ``knn_top1`` ...) per epoch.

    Runs after the kNN monitor in the callback list, so its ``logs`` hold the kNN
    accuracy. Only process 0 writes in multi-client runs.
    """

    def __init__(self, *, model_dir: str, step, log_steps: bool = False):
        """``step()``: the global step (written with every step's record)."""
        super().__init__()
        self.model_dir, self.step, self.log_steps = model_dir, step, log_steps
        self.epoch = 0

    def _write(self, name, record):
        if parallel.process_index() != 0:
            return
        with open(os.path.join(self.model_dir, name), "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.log_steps:
            record = {k: v for k, v in (logs or {}).items() if k != "images_per_sec"}
            self._write("steps.jsonl", dict(step=self.step(), epoch=self.epoch, **record))

    def on_epoch_end(self, epoch, logs=None):
        self._write("metrics.jsonl", {k: v for k, v in (logs or {}).items()})
