"""SimCLR (the paper's main comparison): NT-Xent over all 2B views of the global batch;
no W."""

from __future__ import annotations

import dataclasses

from tf_instcls import defaults
from tf_instcls.losses.contrastive import nt_xent_loss
from tf_instcls.methods.base import Batch, Method, MethodConfig


@dataclasses.dataclass(frozen=True)
class SimCLRConfig(MethodConfig):
    """NT-Xent; its positive is the other view of the same image."""

    method = "simclr"
    temperature: float = defaults.SIMCLR_TEMPERATURE

    @property
    def views_needed(self) -> int:
        return 2


class SimCLR(Method):
    name = "simclr"
    config_class = SimCLRConfig

    def loss(self, batch: Batch):
        return nt_xent_loss(batch.embedding, mesh=self.classifier.mesh,
                            temperature=self.config.temperature)
