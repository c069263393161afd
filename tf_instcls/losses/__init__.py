"""Pure loss functions (no state, no gin, no flags)."""

from tf_instcls.losses.instance_classification import (
    instance_classification_loss,
    instance_classification_loss_and_accuracy,
)

__all__ = ["instance_classification_loss", "instance_classification_loss_and_accuracy"]
