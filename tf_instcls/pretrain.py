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
from tf_instcls.training.config import RunConfig


def run_pretraining(model_dir: str, data=None, model=None, optim=None, train=None, mesh=None,
                    callbacks=(), *, classifier=None, method=None, monitor=None, fault=None,
                    config: RunConfig | None = None) -> dict:
    """Pretrains an encoder in ``model_dir`` (resuming from its latest checkpoint, if
    any); returns the last epoch's logs (with ``knn_top1`` when the data are labelled).

    The configuration is ``config`` (a ``training.config.RunConfig``), or one made of
    the parts given (``DataConfig``, ``ModelConfig``, ...; None: that part's defaults).
    ``callbacks``: the user's Keras callbacks, run after the run's own (prior, mining,
    kNN monitor, metrics, progress, checkpoints, summaries).
    """
    if mesh is None:
        raise ValueError("run_pretraining needs the mesh (parallel.build_mesh)")
    if config is None:
        config = RunConfig.of(data, model, optim, train, classifier=classifier,
                              method=method, monitor=monitor, fault=fault)
    knn = KNNEvaluator(k=config.monitor.k, temperature=config.monitor.temperature,
                       representations=("features",))
    make = functools.partial(callbacks_lib.default_callbacks, config=config,
                             knn_evaluator=knn)
    return loop.run(model_dir, config, mesh, make_callbacks=make, callbacks=callbacks)
