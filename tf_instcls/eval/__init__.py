"""Evaluation protocols (kNN, linear, fine-tuning) and analyses of a run."""

from tf_instcls.eval.knn import knn_grid, nearest_neighbours, weighted_knn

__all__ = ["knn_grid", "nearest_neighbours", "weighted_knn"]
