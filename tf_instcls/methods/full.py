"""Full instance classification (the paper): a cosine softmax over all N rows of W,
Eq. 1, or Eq. 3 with the mined hard negatives and smoothing alpha."""

from __future__ import annotations

from tf_instcls.losses import instance_classification_loss_and_accuracy
from tf_instcls.methods.base import Batch, Method


class Full(Method):
    name = "full"
    trains_w = True

    def loss(self, batch: Batch):
        classifier = self.classifier
        return instance_classification_loss_and_accuracy(
            batch.embedding, batch.view_ids, classifier.class_weights,
            temperature=classifier.temperature, hard_negatives=batch.hard,
            smoothing=self.smoothing if batch.hard is not None else 0.0,
            chunk_size=classifier.chunk_size, valid_classes=classifier.num_instances)
