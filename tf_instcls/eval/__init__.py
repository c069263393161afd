"""Evaluation protocols (kNN monitor and evaluation)."""

from tf_instcls.eval.knn import weighted_knn

__all__ = ["weighted_knn"]
