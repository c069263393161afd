"""Checkpoints every k epochs and every M steps (W saved sharded, never gathered)."""

import os

import keras
from absl import logging

from tf_instcls.training import checkpoints, stages


class CheckpointSaver(keras.callbacks.Callback):
    """Saves backbone, head, W, every optimizer slot, BN statistics and the global step.

    The data position is the global step: an epoch's batches are a pure function of
    (seed, epoch), so a resumed run starts at the next batch with the same views.
    """

    def __init__(self, *, manager, model_dir: str, step, every_steps: int = 0,
                 every_epochs: int = 1):
        """``manager``: the run's tf.train.CheckpointManager; ``step()``: the global step;
        a save at the end of every ``every_epochs``-th epoch (counted from epoch 0, so
        the same epochs whether or not the run was resumed) and at the run's end."""
        super().__init__()
        self.manager, self.model_dir, self.step = manager, model_dir, step
        self.every_steps, self.every_epochs = every_steps, every_epochs
        self.saved_step = None

    def on_train_begin(self, logs=None):
        self.saved_step = self.step()  # the restored (or initial) position

    def _save(self, force: bool = False):
        step = self.step()
        if step == self.saved_step and not force:
            return
        with stages.timed(self.model_dir, "checkpoint", step=step) as fields:
            path = checkpoints.save(self.manager, step)
            fields["bytes"] = stages.directory_bytes(os.path.dirname(path),
                                                     os.path.basename(path) + ".")
        self.saved_step = step
        logging.info("saved checkpoint %s", path)

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps and self.step() % self.every_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_epochs == 0:
            self._save()

    def on_train_end(self, logs=None):
        """The last epoch, a stop at max_steps, or a time budget's plan that ends the
        run (``plan_ended_run``): that step is saved again if it was saved already,
        since the plan changed after the save."""
        self._save(force=bool(logs and logs.get("plan_ended_run")))
