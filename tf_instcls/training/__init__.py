"""Optimisation: the paper's momentum SGD, schedules and train steps."""

from tf_instcls.training.optimizer import MomentumSGD

__all__ = ["MomentumSGD"]
