"""Sampled instance classification (the paper's Table 3 baseline): a softmax over the
batch's classes and ``num_sampled`` uniformly drawn ones."""

from __future__ import annotations

import dataclasses

from tf_instcls.losses.baselines import sampled_instance_classification_loss
from tf_instcls.methods.base import Batch, Method, MethodConfig, draw


@dataclasses.dataclass(frozen=True)
class SampledConfig(MethodConfig):
    """A cosine softmax over the batch's classes and S uniformly drawn ones."""

    method = "sampled"
    num_sampled: int = 1024  # S

    def problems(self) -> list[str]:
        return super().problems() + (
            [] if self.num_sampled >= 1 else ["SampledConfig.num_sampled must be >= 1"])

    def problems_with_data(self, num_instances: int) -> list[str]:
        if self.num_sampled >= num_instances:
            return [f"SampledConfig.num_sampled = {self.num_sampled} must be < N: a sample "
                    "that size covers every class, which is method 'full'"]
        return []

    def describe(self) -> str:
        return f"{super().describe()}, S {self.num_sampled}"


class Sampled(Method):
    name = "sampled"
    config_class = SampledConfig
    trains_w = True

    def loss(self, batch: Batch):
        classifier = self.classifier
        sampled = draw(self.config.num_sampled, classifier.num_instances, self.seed,
                       batch.global_step)
        return sampled_instance_classification_loss(
            batch.embedding, batch.view_ids, classifier.class_weights, sampled,
            temperature=classifier.temperature, valid_classes=classifier.num_instances)
