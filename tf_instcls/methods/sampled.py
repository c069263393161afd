"""Sampled instance classification (the paper's Table 3 baseline): a softmax over the
batch's classes and ``num_sampled`` uniformly drawn ones."""

from __future__ import annotations

from tf_instcls.losses.baselines import sampled_instance_classification_loss
from tf_instcls.methods.base import Batch, Method, draw


class Sampled(Method):
    name = "sampled"
    trains_w = True

    def loss(self, batch: Batch):
        classifier = self.classifier
        sampled = draw(self.config.num_sampled, classifier.num_instances, self.seed,
                       batch.global_step)
        return sampled_instance_classification_loss(
            batch.embedding, batch.view_ids, classifier.class_weights, sampled,
            temperature=classifier.temperature, valid_classes=classifier.num_instances)
