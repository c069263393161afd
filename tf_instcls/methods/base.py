"""The method interface: what a pretraining method owns.

A method owns its configuration (a ``MethodConfig`` subclass: its hyperparameters, their
checks, whether it needs mined hard negatives), the state it adds to a run
(checkpointed under its own names), whether the optimizer trains W, its loss, and what
it does after the update. The train step (``training/step.py``) is the common path
around it: views through the encoder, the tape, the non-finite guard, the optimizer, BN
statistics, loss scaling.

To add a method: one module with a ``MethodConfig`` subclass and a ``Method`` subclass
whose ``config_class`` is it, registered with ``methods.register``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import tensorflow as tf

from tf_instcls import defaults


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """A method's hyperparameters. Subclasses add their own fields (with defaults) and
    extend the checks; ``method`` is the registry name of the method they configure."""

    method: ClassVar[str] = ""
    temperature: float = defaults.TEMPERATURE  # of the method's softmax

    @property
    def num_hard_negatives_mined(self) -> int:
        """K of the mined [N, K] hard-negative table the method's loss reads
        (``Batch.hard``); 0: the run mines nothing."""
        return 0

    @property
    def mining_period(self) -> int:
        """Epochs between two minings of the hard-negative table."""
        return 1

    @property
    def views_needed(self) -> int:
        """The fewest augmented views of each image a step must have."""
        return 1

    def problems(self) -> list[str]:
        """What is wrong with the values, each naming the binding (empty: nothing)."""
        return ([] if self.temperature > 0 else
                [f"{type(self).__name__}.temperature must be > 0; got {self.temperature}"])

    def problems_with_data(self, num_instances: int) -> list[str]:
        """What cannot work with N = ``num_instances`` training images."""
        del num_instances
        return []

    def describe(self) -> str:
        """The method and its values in a few words, for the run's console block."""
        return f"{self.method}, tau {self.temperature}"


@dataclasses.dataclass(frozen=True)
class Batch:
    """What a method's loss and post-update read, inside the step's tf.function.

    embedding: [V b, D] float32, the head's output for the V views (1 or 2, adjacent);
    ids: [b] int32 instance ids; view_ids: [V b], each view's instance id;
    hard: [V b, K] hard negatives of each view's instance, or None (the method mines none);
    global_step: the step counter (read, not advanced).
    """

    embedding: tf.Tensor
    ids: tf.Tensor
    view_ids: tf.Tensor
    hard: tf.Tensor | None
    global_step: tf.Variable


class Method:
    """One pretraining method (subclasses: full, sampled, npid, simclr).

    ``config`` is an instance of the method's ``config_class``; ``classifier`` is the
    run's ``parallel.InstanceClassifier`` (W, or NPID's memory bank in W's place; SimCLR
    builds one but never reads it).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    trains_w: ClassVar[bool] = False  # the optimizer trains W (else W is a bank, or unused)

    def __init__(self, config: MethodConfig, classifier, *, seed: int = 0,
                 steps_per_epoch: int | None = None):
        self.config = config
        self.classifier = classifier
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch

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
