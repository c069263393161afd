"""Full instance classification (the paper): a cosine softmax over all N rows of W,
Eq. 1, or Eq. 3 with the mined hard negatives and smoothing alpha."""

from __future__ import annotations

from tf_instcls.losses import instance_classification_loss_and_accuracy
from tf_instcls.methods.base import Batch, Method


def cosine_softmax_loss(batch: Batch, classifier, smoothing: float = 0.0):
    """(mean loss, hit [2b]) of the cosine softmax over all rows of the classifier's W:
    Eq. 3 with the batch's hard negatives when ``smoothing`` > 0 and the batch has them,
    else Eq. 1 (also NPID's full non-parametric softmax over its bank). The mean lets a
    chunked loss take each chunk's gradient in one pass (``reduction="mean"``)."""
    hard = batch.hard if smoothing > 0 else None
    return instance_classification_loss_and_accuracy(
        batch.embedding, batch.view_ids, classifier.class_weights,
        temperature=classifier.temperature, hard_negatives=hard,
        smoothing=smoothing if hard is not None else 0.0,
        chunk_size=classifier.chunk_size, valid_classes=classifier.num_instances,
        reduction="mean")


class Full(Method):
    name = "full"
    trains_w = True

    def loss(self, batch: Batch):
        return cosine_softmax_loss(batch, self.classifier, self.smoothing)
