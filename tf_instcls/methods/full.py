"""Full instance classification (the paper): a cosine softmax over all N rows of W,
Eq. 1, or Eq. 3 with the mined hard negatives and smoothing alpha."""

from __future__ import annotations

import dataclasses

from tf_instcls.losses import instance_classification_loss_and_accuracy
from tf_instcls.methods.base import Batch, Method, MethodConfig


@dataclasses.dataclass(frozen=True)
class FullConfig(MethodConfig):
    """The paper's method: Eq. 1, or Eq. 3 with K mined hard negatives and smoothing."""

    method = "full"
    smoothing: float = 0.2  # alpha of Eq. 2-3; 0: Eq. 1 (no mining)
    num_hard_negatives: int = 100  # K of Eq. 2 (needs smoothing > 0 to be used)
    mining_period: int = 1  # epochs between two minings of the table (the paper: 1)

    @property
    def num_hard_negatives_mined(self) -> int:
        return self.num_hard_negatives if self.smoothing > 0 else 0

    def problems(self) -> list[str]:
        problems = super().problems()
        if not 0 <= self.smoothing < 1:
            problems.append(f"FullConfig.smoothing must be in [0, 1); got {self.smoothing}")
        if self.num_hard_negatives < 0:
            problems.append("FullConfig.num_hard_negatives must be >= 0")
        if self.smoothing and self.num_hard_negatives < 1:
            problems.append(f"FullConfig.smoothing = {self.smoothing} needs hard negatives: "
                            "set FullConfig.num_hard_negatives >= 1 (the paper: 100) or "
                            "smoothing = 0")
        if self.mining_period < 1:
            problems.append("FullConfig.mining_period must be >= 1")
        return problems

    def problems_with_data(self, num_instances: int) -> list[str]:
        if self.num_hard_negatives_mined >= num_instances:
            return [f"FullConfig.num_hard_negatives = {self.num_hard_negatives} must be < N "
                    "(each image has N - 1 others)"]
        return []

    def describe(self) -> str:
        eq3 = (f"Eq. 3: smoothing alpha {self.smoothing}, K {self.num_hard_negatives}"
               if self.num_hard_negatives_mined else "Eq. 1: no smoothing")
        return f"{super().describe()}, {eq3}"


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
    config_class = FullConfig
    trains_w = True

    def loss(self, batch: Batch):
        return cosine_softmax_loss(batch, self.classifier, self.config.smoothing)
