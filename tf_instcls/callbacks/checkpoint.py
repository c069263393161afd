"""Checkpoints every epoch and every M steps (W saved sharded, never gathered)."""

import keras
from absl import logging


class CheckpointSaver(keras.callbacks.Callback):
    """Saves backbone, head, W, every optimizer slot, BN statistics and the global step.

    The data position is the global step: an epoch's batches are a pure function of
    (seed, epoch), so a resumed run starts at the next batch with the same views.
    """

    def __init__(self, state, every_steps: int = 0):
        super().__init__()
        self.state = state
        self.every_steps = every_steps

    def _save(self):
        step = self.state.step
        if self.state.manager.latest_checkpoint and self.state.manager.latest_checkpoint.endswith(
            f"-{step}"
        ):
            return
        path = self.state.manager.save(checkpoint_number=step)
        logging.info("saved checkpoint %s", path)

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps and self.state.step % self.every_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()
