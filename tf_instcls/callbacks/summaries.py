"""TensorBoard scalars (loss, instance accuracy, lr, kNN accuracy) under model_dir/tb."""

import os

import keras
import tensorflow as tf

from tf_instcls import parallel


class ScalarSummaries(keras.callbacks.Callback):
    """Written by process 0 only (every process sees the same global values)."""

    def __init__(self, *, model_dir: str, step, every_steps: int = 10):
        """``step()``: the global step (the summaries' x axis)."""
        super().__init__()
        self.step, self.every_steps = step, every_steps
        self.writer = (tf.summary.create_file_writer(os.path.join(model_dir, "tb"))
                       if parallel.process_index() == 0 else tf.summary.create_noop_writer())

    def on_train_batch_end(self, batch, logs=None):
        step = self.step()
        if step % self.every_steps == 0:
            with self.writer.as_default(step=step):
                for key in ("loss", "instance_acc", "lr", "images_per_sec"):
                    if key in (logs or {}):
                        tf.summary.scalar(f"train/{key}", logs[key])

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default(step=self.step()):
            for key, value in (logs or {}).items():
                if isinstance(value, float):
                    tf.summary.scalar(f"epoch/{key}", value)
        self.writer.flush()
