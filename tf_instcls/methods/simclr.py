"""SimCLR (the paper's main comparison): NT-Xent over all 2B views of the global batch;
no W."""

from __future__ import annotations

from tf_instcls.losses.contrastive import nt_xent_loss
from tf_instcls.methods.base import Batch, Method


class SimCLR(Method):
    name = "simclr"

    def loss(self, batch: Batch):
        return nt_xent_loss(batch.embedding, mesh=self.classifier.mesh,
                            temperature=self.config.temperature)
