"""The callbacks every pretraining run has, in the order their hooks must run."""

from tf_instcls.callbacks.checkpoint import CheckpointSaver
from tf_instcls.callbacks.contrastive_prior import ContrastivePrior
from tf_instcls.callbacks.hard_negative_miner import HardNegativeMiner
from tf_instcls.callbacks.knn_monitor import KNNMonitor
from tf_instcls.callbacks.metrics_writer import MetricsWriter
from tf_instcls.callbacks.progress import ProgressLogger
from tf_instcls.callbacks.summaries import ScalarSummaries


def default_callbacks(state, config, knn_evaluator=None) -> list:
    """The run's own callbacks for ``state`` (a ``training.TrainState``) and ``config``
    (its ``RunConfig``); the kNN monitor runs ``knn_evaluator`` when the run has a
    labelled eval split (``pretrain.run_pretraining`` passes the kNN evaluator). Each
    callback is given only what it reads: live objects, ``step()`` (the global step)
    and ``state.epoch_results`` (the loop's dict of this epoch's results, cleared at
    each epoch's start).

    Order matters (each hook runs in this order): the prior before the kNN monitor's
    "at initialisation" (so it sees the network the training really starts from, BN
    statistics included); mining before the epoch's bar; the kNN result before the
    epoch's record and line; a step's and an epoch's record written BEFORE their
    checkpoint, so a kill between the two replays the step instead of losing its line.
    """
    step, results, model_dir = (lambda: state.step), state.epoch_results, state.model_dir
    train, monitor = config.train, config.monitor
    own = [ContrastivePrior(encoder=state.encoder, classifier=state.classifier,
                            source=state.train_source, image_size=config.data.image_size,
                            mesh=state.mesh, step=step, mode=config.classifier.init_mode,
                            model_dir=model_dir)]
    epochs = lambda: state.epochs  # noqa: E731 (a time budget's plan may change it)
    if state.hard_negatives is not None:
        own.append(HardNegativeMiner(classifier=state.classifier,
                                     table=state.hard_negatives.table,
                                     table_epoch=state.hard_negatives.epoch, results=results,
                                     period=config.method.mining_period, model_dir=model_dir))
    if (knn_evaluator is not None and state.eval_source is not None
            and state.train_source.labels is not None and monitor.every_epochs > 0):
        own.append(KNNMonitor(evaluator=knn_evaluator, encoder=state.encoder,
                              classifier=state.classifier, train_source=state.train_source,
                              eval_source=state.eval_source, image_size=config.data.image_size,
                              mesh=state.mesh, epochs=epochs, step=step,
                              results=results, every_epochs=monitor.every_epochs,
                              model_dir=model_dir))
    return own + [
        MetricsWriter(model_dir=model_dir, step=step, log_steps=train.log_steps),
        ProgressLogger(epochs=epochs, steps_per_epoch=state.steps_per_epoch,
                       batch_size=train.batch_size, step=step, results=results,
                       verbose=train.verbose),
        CheckpointSaver(manager=state.manager, model_dir=model_dir, step=step,
                        every_steps=train.checkpoint_every_steps,
                        every_epochs=train.checkpoint_every_epochs),
        ScalarSummaries(model_dir=model_dir, step=step)]
