"""``run_pretraining``: the library's entry point, on top of every layer.

It wires what the layers below do not know about each other: the training loop
(``training``), the run's callbacks (``callbacks``) and the kNN evaluator (``eval``)
that the kNN monitor runs, so that no layer imports one above it.
"""

from __future__ import annotations

import functools

from tf_instcls import callbacks as callbacks_lib
from tf_instcls.eval.evaluators import KNNEvaluator
from tf_instcls.training import loop
from tf_instcls.training.loop import DataConfig, ModelConfig, OptimConfig, TrainConfig


def run_pretraining(model_dir: str, data: DataConfig, model: ModelConfig, optim: OptimConfig,
                    train: TrainConfig, mesh, callbacks=()) -> dict:
    """Pretrains an encoder in ``model_dir`` (resuming from its latest checkpoint, if
    any); returns the last epoch's logs (with ``knn_top1`` when the data are labelled).

    ``callbacks``: the user's Keras callbacks, run after the run's own (prior, mining,
    kNN monitor, metrics, progress, checkpoints, summaries).
    """
    knn = KNNEvaluator(k=train.knn_k, temperature=train.knn_temperature,
                       representations=("features",))
    make = functools.partial(callbacks_lib.default_callbacks, train=train, knn_evaluator=knn)
    return loop.run(model_dir, data, model, optim, train, mesh, make_callbacks=make,
                    callbacks=callbacks)
