"""NPID (Wu et al., 2018): a memory bank in W's place, NCE with m noise samples (or the
full non-parametric softmax for m = 0), and the memory rule after each step.

NCE's normalising constant Z is the method's state (log Z and the epoch it was estimated
at, checkpointed as ``npid_log_z`` / ``npid_z_epoch``); ``NPIDConfig.z_estimate`` says
when it is re-estimated.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tf_instcls import defaults
from tf_instcls.losses.baselines import npid_nce_loss, update_memory_bank
from tf_instcls.methods.base import Batch, Method, MethodConfig, draw
from tf_instcls.methods.full import cosine_softmax_loss
from tf_instcls.parallel import layouts
from tf_instcls.parallel.layouts import keep_or_replace, masked

Z_ESTIMATES = ("first", "epoch", "step")


@dataclasses.dataclass(frozen=True)
class NPIDConfig(MethodConfig):
    """NPID: a memory bank in W's place, NCE with m noise samples, the memory rule."""

    method = "npid"
    temperature: float = defaults.NPID_TEMPERATURE
    noise: int = 4096  # m of NCE; 0: the full non-parametric softmax over the bank
    momentum: float = 0.5  # memory update v <- normalise(mu v + (1 - mu) f)
    proximal: float = 0.0  # lambda of NPID's proximal term (the paper: 30)
    # NCE's normalising constant Z: "step" (default) uses every step's own estimate
    # (self-normalised NCE: the gradient is bounded by 2 / t); "first" estimates it once,
    # on the first step, as NPID's code; "epoch" re-estimates it on each epoch's first
    # step. On a 4,068-image CIFAR-10 subset "first" diverged (the bank fills in 32
    # steps, so Z stays that of a random bank) and "epoch" collapsed the features to one
    # direction; "step" did neither.
    z_estimate: str = "step"

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.noise < 0:
            problems.append("NPIDConfig.noise must be >= 0")
        if self.z_estimate not in Z_ESTIMATES:
            problems.append(f"NPIDConfig.z_estimate must be one of {Z_ESTIMATES}; got "
                            f"{self.z_estimate!r}")
        if not 0 <= self.momentum < 1:
            problems.append("NPIDConfig.momentum must be in [0, 1)")
        return problems

    def problems_with_data(self, num_instances: int) -> list[str]:
        if self.noise >= num_instances:
            return [f"NPIDConfig.noise = {self.noise} must be < N (NPID draws m << N noise "
                    "samples; m = 0 is the full non-parametric softmax)"]
        return []

    def describe(self) -> str:
        nce = f"NCE with m = {self.noise}" if self.noise else "full non-parametric softmax"
        return f"{super().describe()}, {nce}"


class NPID(Method):
    name = "npid"
    config_class = NPIDConfig

    def __init__(self, config, classifier, **kwargs):
        super().__init__(config, classifier, **kwargs)
        self.log_z = self.z_epoch = None
        if config.noise > 0:
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
        if config.noise == 0:  # the full non-parametric softmax (bank not trained)
            return cosine_softmax_loss(batch, classifier)
        noise = draw(config.noise, classifier.num_instances, self.seed, batch.global_step)
        log_z, z_epoch = self.log_z, self.z_epoch
        epoch = tf.math.floordiv(tf.cast(batch.global_step, tf.int64), self.steps_per_epoch)
        stale = z_epoch < 0  # never estimated: this batch's estimate
        if config.z_estimate == "epoch":
            stale = tf.logical_or(stale, z_epoch < epoch)
        elif config.z_estimate == "step":  # every step's own estimate
            stale = tf.ones_like(stale)
        stored = tf.convert_to_tensor(log_z)
        loss, estimate, hit = npid_nce_loss(
            batch.embedding, batch.view_ids, classifier.class_weights, noise,
            log_z=stored, estimate_now=stale, temperature=classifier.temperature,
            valid_classes=classifier.num_instances, proximal=config.proximal)
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
        keep = keep_or_replace(finite, tf.constant(self.config.momentum), tf.constant(1.0))
        update_memory_bank(self.classifier.class_weights, batch.ids, features, momentum=keep)
