"""The callbacks every pretraining run has, in the order their hooks must run."""

from tf_instcls.callbacks.checkpoint import CheckpointSaver
from tf_instcls.callbacks.contrastive_prior import ContrastivePrior
from tf_instcls.callbacks.hard_negative_miner import HardNegativeMiner
from tf_instcls.callbacks.knn_monitor import KNNMonitor
from tf_instcls.callbacks.metrics_writer import MetricsWriter
from tf_instcls.callbacks.progress import ProgressLogger
from tf_instcls.callbacks.summaries import ScalarSummaries


def default_callbacks(state, train, knn_evaluator=None) -> list:
    """The run's own callbacks for ``state`` (a ``training.TrainState``) and ``train``
    (its ``TrainConfig``); the kNN monitor runs ``knn_evaluator`` when the run has a
    labelled eval split (``pretrain.run_pretraining`` passes the kNN evaluator).

    Order matters (each hook runs in this order): the prior before the kNN monitor's
    "at initialisation" (so it sees the network the training really starts from, BN
    statistics included); mining before the epoch's bar; the kNN result before the
    epoch's record and line; a step's and an epoch's record written BEFORE their
    checkpoint, so a kill between the two replays the step instead of losing its line.
    """
    own = [ContrastivePrior(state, mode=train.init_mode),
           *([HardNegativeMiner(state, period=train.mining_period)]
             if state.hard_table is not None else [])]
    if (knn_evaluator is not None and state.eval_source is not None
            and state.train_source.labels is not None and train.knn_every_epochs > 0):
        own.append(KNNMonitor(state, knn_evaluator, every_epochs=train.knn_every_epochs))
    return own + [MetricsWriter(state, log_steps=train.log_steps),
                  ProgressLogger(state, verbose=train.verbose),
                  CheckpointSaver(state, every_steps=train.checkpoint_every_steps),
                  ScalarSummaries(state)]
