"""NPID (Wu et al., 2018): a memory bank in W's place, NCE with m noise samples (or the
full non-parametric softmax for m = 0), and the memory rule after each step.

NCE's normalising constant Z is the method's state (log Z and the epoch it was estimated
at, checkpointed as ``npid_log_z`` / ``npid_z_epoch``); ``npid_z_estimate`` says when it
is re-estimated (WORKSPACE.md, "NPID with NCE").
"""

from __future__ import annotations

import tensorflow as tf

from tf_instcls.losses.baselines import npid_nce_loss, update_memory_bank
from tf_instcls.methods.base import Batch, Method, draw
from tf_instcls.methods.full import cosine_softmax_loss
from tf_instcls.parallel import layouts
from tf_instcls.parallel.layouts import keep_or_replace, masked


class NPID(Method):
    name = "npid"

    def __init__(self, config, classifier, **kwargs):
        super().__init__(config, classifier, **kwargs)
        self.log_z = self.z_epoch = None
        if config.npid_noise > 0:
            if self.steps_per_epoch is None:
                raise ValueError("NPID with NCE needs steps_per_epoch")
            mesh = classifier.mesh
            self.log_z = layouts.replicated_variable(0.0, mesh, "npid_log_z", tf.float32)
            self.z_epoch = layouts.replicated_variable(-1, mesh, "npid_z_epoch", tf.int64)

    def variables(self) -> dict:
        if self.log_z is None:
            return {}
        return {"npid_log_z": self.log_z, "npid_z_epoch": self.z_epoch}

    def loss(self, batch: Batch):
        classifier, config = self.classifier, self.config
        if config.npid_noise == 0:  # the full non-parametric softmax (bank not trained)
            return cosine_softmax_loss(batch, classifier)
        noise = draw(config.npid_noise, classifier.num_instances, self.seed, batch.global_step)
        log_z, z_epoch = self.log_z, self.z_epoch
        epoch = tf.math.floordiv(tf.cast(batch.global_step, tf.int64), self.steps_per_epoch)
        stale = z_epoch < 0  # never estimated: this batch's estimate
        if config.npid_z_estimate == "epoch":
            stale = tf.logical_or(stale, z_epoch < epoch)
        elif config.npid_z_estimate == "step":  # every step's own estimate
            stale = tf.ones_like(stale)
        stored = tf.convert_to_tensor(log_z)
        loss, estimate, hit = npid_nce_loss(
            batch.embedding, batch.view_ids, classifier.class_weights, noise,
            log_z=stored, estimate_now=stale, temperature=classifier.temperature,
            valid_classes=classifier.num_instances, proximal=config.npid_proximal)
        log_z.assign(keep_or_replace(stale, estimate, stored))
        z_epoch.assign(tf.cast(keep_or_replace(stale, tf.cast(epoch, tf.float32),
                                               tf.cast(z_epoch, tf.float32)), tf.int64))
        return loss, hit

    def post_update(self, batch: Batch, finite) -> None:
        # The memory rule with the mean of the views' features; a non-finite step
        # leaves the bank as it was (momentum 1 = keep).
        d = batch.embedding.shape[-1]
        views = batch.embedding.shape[0] // batch.ids.shape[0]
        features = tf.reduce_mean(tf.reshape(batch.embedding, [-1, views, d]), axis=1)
        features = masked(tf.math.l2_normalize(features, axis=-1), finite)
        keep = keep_or_replace(finite, tf.constant(self.config.npid_momentum), tf.constant(1.0))
        update_memory_bank(self.classifier.class_weights, batch.ids, features, momentum=keep)
