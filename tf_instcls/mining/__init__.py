"""Hardest-class mining for the smoothed loss (Eq. 2-3)."""

from tf_instcls.mining.hardest import hardest_negatives

__all__ = ["hardest_negatives"]
