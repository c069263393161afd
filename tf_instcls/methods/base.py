"""The method interface: what a pretraining method owns.

A method owns the state it adds to a run (checkpointed under its own names), whether
the optimizer trains W, its loss, and what it does after the update. The train step
(``training/step.py``) is the common path around it: views through the encoder, the
tape, the non-finite guard, the optimizer, BN statistics, loss scaling.

To add a method: a module here with a ``Method`` subclass, one entry in ``METHODS``
(``methods/__init__.py``), and its values in ``ModelConfig`` (WORKSPACE.md, "How to add").
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Batch:
    """What a method's loss and post-update read, inside the step's tf.function.

    embedding: [V b, D] float32, the head's output for the V views (1 or 2, adjacent);
    ids: [b] int32 instance ids; view_ids: [V b], each view's instance id;
    hard: [V b, K] hard negatives of each view's instance, or None (no Eq. 3 this run);
    global_step: the step counter (read, not advanced).
    """

    embedding: tf.Tensor
    ids: tf.Tensor
    view_ids: tf.Tensor
    hard: tf.Tensor | None
    global_step: tf.Variable


class Method:
    """One pretraining method (subclasses: full, sampled, npid, simclr).

    ``classifier`` is the run's ``parallel.InstanceClassifier`` (W, or NPID's memory bank
    in W's place; SimCLR builds one but never reads it).
    """

    name = ""
    trains_w = False  # the optimizer trains W (else W is a bank, or unused)

    def __init__(self, config, classifier, *, seed: int = 0, steps_per_epoch: int | None = None,
                 smoothing: float = 0.0):
        self.config = config
        self.classifier = classifier
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch
        self.smoothing = smoothing

    def variables(self) -> dict:
        """{checkpoint name: variable} of the method's own state (saved and restored
        with the run's checkpoint)."""
        return {}

    def loss(self, batch: Batch):
        """(loss [2b] or its mean, hit [2b]) of one step (the step takes the mean)."""
        raise NotImplementedError

    def post_update(self, batch: Batch, finite) -> None:
        """After the optimizer's update (``finite``: the step was applied)."""
        # A statement, not only a docstring: AutoGraph cannot convert an empty body (it
        # warns, and the console test counts the warning).
        del batch, finite


def draw(count: int, num_classes: int, seed: int, global_step) -> tf.Tensor:
    """``count`` uniform class ids for this step: a pure function of (seed, step), so a
    resumed run draws the same ones."""
    pair = tf.stack([tf.cast(seed, tf.int64) * 7919 + 17, tf.cast(global_step, tf.int64)])
    return tf.random.stateless_uniform([count], pair, 0, num_classes, dtype=tf.int32)
