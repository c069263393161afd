"""Per-epoch hardest-class mining for the smoothed loss (Eq. 2-3)."""

import time

import keras
from absl import logging

from tf_instcls import parallel
from tf_instcls.mining import hardest_negatives
from tf_instcls.training import stages


class HardNegativeMiner(keras.callbacks.Callback):
    """Recomputes the [N, K] hard-negative table from W before every ``period``-th epoch.

    The table is ``table`` (row-sharded like W, checkpointed together with
    ``table_epoch``, the epoch it was mined at). A run resumed mid-epoch keeps the table
    that epoch started with, so the resumed steps see the same hard negatives. The
    mining time goes into ``results`` (the loop's dict of this epoch's results).
    """

    def __init__(self, *, classifier, table, table_epoch, results: dict, period: int = 1,
                 block_size: int | None = None, model_dir: str | None = None):
        super().__init__()
        if period < 1:
            raise ValueError(f"mining period must be >= 1; got {period}")
        self.classifier, self.table, self.table_epoch = classifier, table, table_epoch
        self.results, self.period, self.block_size = results, period, block_size
        self.model_dir = model_dir

    def on_epoch_begin(self, epoch, logs=None):
        have = int(parallel.to_numpy(self.table_epoch))
        due = have < 0 or (epoch % self.period == 0 and have != epoch)
        if not due:
            return
        clf = self.classifier
        start = time.perf_counter()
        # a bar only when mining is long enough to wonder about (> 8 query blocks)
        table = hardest_negatives(clf.class_weights, self.table.shape[1],
                                  block_size=self.block_size, valid_rows=clf.num_instances,
                                  progress=clf.num_instances > 8 * 4096)
        clf.assign_table(self.table, table)
        self.table_epoch.assign(
            parallel.pack_sharded(epoch, parallel.replicated_layout(clf.mesh, 0))
        )
        seconds = time.perf_counter() - start
        self.results["mining_seconds"] = seconds
        stages.record(self.model_dir, "mining", seconds, epoch=epoch,
                      rows=clf.num_instances, k=table.shape[1])
        logging.info("mined %d hard negatives per instance (epoch %d) in %.2f s",
                     table.shape[1], epoch, seconds)
