"""Per-epoch hardest-class mining for the smoothed loss (Eq. 2-3)."""

import time

import keras
from absl import logging

from tf_instcls import parallel
from tf_instcls.mining import hardest_negatives
from tf_instcls.training import stages


class HardNegativeMiner(keras.callbacks.Callback):
    """Recomputes the [N, K] hard-negative table from W before every ``period``-th epoch.

    The table lives in ``state.hard_table`` (row-sharded like W, checkpointed together
    with ``state.hard_table_epoch``). A run resumed mid-epoch keeps the table that epoch
    started with, so the resumed steps see the same hard negatives.
    """

    def __init__(self, state, period: int = 1, block_size: int | None = None):
        super().__init__()
        if period < 1:
            raise ValueError(f"mining period must be >= 1; got {period}")
        self.state, self.period, self.block_size = state, period, block_size

    def on_epoch_begin(self, epoch, logs=None):
        state = self.state
        have = int(parallel.to_numpy(state.hard_table_epoch))
        due = have < 0 or (epoch % self.period == 0 and have != epoch)
        if not due:
            return
        clf = state.classifier
        start = time.perf_counter()
        # a bar only when mining is long enough to wonder about (> 8 query blocks)
        table = hardest_negatives(clf.class_weights, state.hard_table.shape[1],
                                  block_size=self.block_size, valid_rows=clf.num_instances,
                                  progress=clf.num_instances > 8 * 4096)
        clf.assign_table(state.hard_table, table)
        state.hard_table_epoch.assign(
            parallel.pack_sharded(epoch, parallel.replicated_layout(clf.mesh, 0))
        )
        seconds = time.perf_counter() - start
        state.epoch_results["mining_seconds"] = seconds
        stages.record(getattr(state, "model_dir", None), "mining", seconds, epoch=epoch,
                      rows=clf.num_instances, k=table.shape[1])
        logging.info("mined %d hard negatives per instance (epoch %d) in %.2f s",
                     table.shape[1], epoch, seconds)
