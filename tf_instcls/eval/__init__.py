"""Evaluation protocols (kNN, linear, fine-tuning, instance accuracy) behind one API,
``evaluator.run(model, splits)``, one runner, and analyses of a run."""

from tf_instcls.eval.evaluators import (
    FinetuneEvaluator,
    InstanceAccuracyEvaluator,
    KNNEvaluator,
    LinearEvaluator,
)
from tf_instcls.eval.knn import knn_grid, nearest_neighbours, weighted_knn

__all__ = ["FinetuneEvaluator", "InstanceAccuracyEvaluator", "KNNEvaluator",
           "LinearEvaluator", "knn_grid", "nearest_neighbours", "weighted_knn"]
