"""A run's configuration, by owner: one small frozen dataclass for each part it sets.

| class | owns | read by |
|---|---|---|
| ``DataConfig`` | images, split, augmentation | ``data`` |
| ``ModelConfig`` | backbone + head (the encoder) | ``models`` |
| ``ClassifierConfig`` | W: layout, chunking, unit rows, initialisation | ``parallel``, the prior |
| ``method``: its own config | ``FullConfig``, ``SampledConfig``, ``NPIDConfig``... | ``methods`` |
| ``OptimConfig`` | SGD, schedule, W's own step, loss scaling | ``training.optimizer`` |
| ``TrainConfig`` | the loop: epochs, batch, seed, checkpoints, console | ``training.loop`` |
| ``MonitorConfig`` | the kNN monitor | ``callbacks.KNNMonitor`` |
| ``FaultConfig`` | non-finite steps, the watchdog | ``training.loop`` |

``RunConfig`` holds one of each; its ``method`` is the chosen method's own config (each
method module defines it, ``methods.register`` makes it known). Every default is written
once (``tf_instcls.defaults`` for the ones shared with evaluation). gin stays at the edge
(``cli/gin_config.py`` registers these classes); the library never imports it. Renamed
bindings are listed in ``RENAMED``; the gin glue turns an old name into an error that
names the new one.
"""

from __future__ import annotations

import dataclasses

from tf_instcls import data as data_lib
from tf_instcls import defaults, models
from tf_instcls.methods import (  # noqa: F401 (the methods' configs, re-exported)
    METHODS,
    FullConfig,
    MethodConfig,
    NPIDConfig,
    SampledConfig,
    SimCLRConfig,
)
from tf_instcls.training.prior import INIT_MODES


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are augmented."""

    dataset: str = "digits"  # digits | npz:PATH | folder:PATH | tfds:NAME[:SPLIT]
    eval_dataset: str | None = None  # labelled kNN queries; None: hold out a part
    # used when eval_dataset is None and labels exist
    holdout_fraction: float = defaults.HOLDOUT_FRACTION
    # Seed of that holdout's class-stratified draw. None: TrainConfig.seed (so runs of
    # several training seeds hold out different images); set it to compare seeds on
    # one split.
    holdout_seed: int | None = None
    image_size: int = 32
    # Side of the training views: the random-resized crop's output (beyond the paper).
    # None: image_size. Evaluation, the prior, the kNN monitor and the export always see
    # image_size. A smaller side is cheaper about in proportion to its pixels (24 of 32
    # px: 391 against 236 training instances/s here, benchmarks/bench_vs_torch.py
    # --side=24 / --side=32), and since a random crop of s of the area enlarges
    # the object by sqrt(1/s), a crop shown at 24 px has about the object size of the
    # whole image at 32 (FixRes, Touvron et al. 2019). Needs a backbone that takes any
    # side (every one here); the encoder is built for any side when this differs.
    train_image_size: int | None = None
    # Progressive resizing (beyond the paper; fast.ai's progressive resizing, the
    # "progressive learning" of EfficientNetV2, Tan & Le 2021): ((first_epoch, side), ...)
    # from epoch 0 in rising epochs, e.g. ((0, 16), (64, 24)): views of 16 px for epochs
    # 0-63, then of 24 px. Cheap small views early, the final side for the last epochs
    # (the BatchNorm statistics and the object scale the export sees are the last
    # stage's). None: one side (train_image_size) throughout. Set this or
    # train_image_size, not both. Resume-safe: the side is a function of the epoch.
    train_size_schedule: tuple[tuple[int, int], ...] | None = None
    # Augmentation. None: the paper's default for the image size (data.default_config:
    # crops of 20-100% and no blur below 96 px; 8-100% and blur p = 0.5 from 96 px).
    crop_scale: tuple[float, float] | None = None
    blur_prob: float | None = None
    jitter_strength: tuple[float, float, float, float] | None = None  # (0.4, 0.4, 0.4, 0.1)
    jitter_prob: float | None = None  # 0.8
    grayscale_prob: float | None = None  # 0.2
    skip_corrupt_images: bool = False
    # Augmented views of each image per step: 2 (the paper, SimCLR) or 1 (NPID's single
    # view; beyond the paper for this method). A parametric classifier needs no pair: at
    # 1 view an epoch costs half the encoder passes, so the same compute buys twice the
    # epochs and twice the visits of each row of W.
    views: int = 2

    @property
    def train_side(self) -> int:
        """The side of the training views without a schedule: ``train_image_size``, else
        ``image_size``; with ``train_size_schedule``, its last stage's side."""
        if self.train_size_schedule:
            return int(self.train_size_schedule[-1][1])
        return self.train_image_size or self.image_size

    @property
    def _schedule(self) -> tuple:
        """``train_size_schedule``, or the one stage ``((0, train_side),)``."""
        return self.train_size_schedule or ((0, self.train_side),)

    def train_stages(self, epochs: int) -> list[tuple[int, int, int]]:
        """``[(first_epoch, end_epoch, side), ...]``: the training views' side over
        epochs ``0 .. epochs - 1`` (one stage without ``train_size_schedule``)."""
        schedule = self._schedule
        firsts = [int(first) for first, _ in schedule]
        ends = [*firsts[1:], epochs]
        return [(first, min(end, epochs), int(side))
                for first, end, (_, side) in zip(firsts, ends, schedule) if first < epochs]

    def split_seed(self, train_seed: int) -> int:
        """The seed of the holdout's draw: holdout_seed, or the run's training seed."""
        return train_seed if self.holdout_seed is None else self.holdout_seed

    @property
    def trains_at_image_size(self) -> bool:
        """Whether every training view has evaluation's side (else the encoder is built
        for any side)."""
        return all(int(side) == self.image_size for _, side in self._schedule)

    def augment_config(self, side: int | None = None) -> data_lib.AugmentConfig:
        """The training views' augmentation: the size's defaults, then the values set;
        the views' side is ``side`` (a stage of ``train_size_schedule``), else
        ``train_side``."""
        overrides = {name: tuple(value) if isinstance(value, list) else value
                     for name in ("crop_scale", "blur_prob", "jitter_strength", "jitter_prob",
                                  "grayscale_prob")
                     if (value := getattr(self, name)) is not None}
        overrides["image_size"] = side or self.train_side
        return dataclasses.replace(data_lib.default_config(self.image_size), **overrides)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The encoder: backbone and projection head."""

    backbone: str = "convnet_small"
    backbone_width: int | None = None
    use_head: bool = True
    head_hidden_dim: int = defaults.HEAD_HIDDEN_DIM
    # Beyond the paper: the head ends in a BatchNormalization without scale and shift
    # (SimSiam's / MoCo v3's projector), so embeddings and the prior's rows of W are
    # centred instead of sitting in a cone. False: the paper's head.
    head_output_bn: bool = False
    embedding_dim: int = defaults.EMBEDDING_DIM
    # The backbone and head's compute dtype (Keras mixed-precision policy): "float32",
    # "mixed_bfloat16" (bfloat16 compute, float32 variables) or "mixed_float16" (float16
    # compute with dynamic loss scaling: OptimConfig.initial_loss_scale). W, its
    # momentum, the softmax and both encoder outputs stay float32, so checkpoints,
    # evaluation and the export are float32 whatever is set here.
    precision: str = "float32"
    # BatchNorm's training pass: "auto" takes TensorFlow's fused kernel where the batch is
    # on one device (a 1-device mesh) and the closed-form one reducing over the global
    # batch otherwise; "closed_form" always the latter. The same statistics either way
    # (models/batchnorm.py).
    batchnorm_kernel: str = "auto"


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """W [N, D]: its layout on the mesh, the loss's chunking, its rows, its start."""

    layout: str = "sharded"  # sharded (DHP) | replicated (DDP)
    chunk_size: int | None = None  # rows of the batch per chunk of the loss; None: one
    # Keep W's rows at unit norm (after the prior and after every step); see
    # InstanceClassifier(unit_norm_rows). False: the paper's unconstrained W.
    unit_norm: bool = False
    init_mode: str = "prior_running_bn"  # gaussian | prior_fixed_bn | prior_running_bn


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The paper's optimizer: SGD m=0.9, wd=1e-4, lr 0.48 per 4096, warm-up + cosine."""

    base_learning_rate: float = 0.48
    base_batch_size: int = 4096
    warmup_epochs: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # W's own step: lr * classifier_lr_scale, decay classifier_weight_decay (None: the
    # same as the backbone's). Defaults: the paper's single optimizer.
    classifier_lr_scale: float = 1.0
    classifier_weight_decay: float | None = None
    # mixed_float16 only: dynamic loss scaling (Keras' LossScaleOptimizer defaults). A step
    # whose scaled gradients overflow is skipped and halves the scale (never below 1);
    # loss_scale_growth_steps finite steps in a row double it.
    initial_loss_scale: float = 32768.0
    loss_scale_growth_steps: int = 2000


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The epoch loop."""

    epochs: int = 200
    batch_size: int = 256  # instances per step (each gives two views)
    seed: int = 0
    checkpoint_every_steps: int = 0  # 0: only at epoch ends
    # Save at the end of every k-th epoch (and always at the run's end). 1: every epoch.
    # A save of the DTensor variables costs a new tf.function trace each time (0.4-0.9 s
    # on 2 CPU cores for ResNet-18-CIFAR, 8-10% of a 24 px epoch on the CIFAR subset), so
    # short epochs may save every few; a kill then re-runs at most k - 1 epochs, and the
    # resume stays exact.
    checkpoint_every_epochs: int = 1
    keep_checkpoints: int = 3
    deterministic: bool = False
    log_steps: bool = False  # write steps.jsonl (one line per step)
    verbose: int = 1
    # Stop (with a checkpoint) once the global step reaches this; 0: no limit. The
    # schedule is still that of `epochs`, so rerunning with a larger max_steps (or 0)
    # continues the same run exactly: scale runs and smoke tests of long configs.
    max_steps: int = 0
    # A wall-clock budget in minutes (0: none). With one, `epochs` is the most the run may
    # train: after a few timed epochs it plans how many fit the budget on this machine
    # (counted from the run's start; the kNN monitor's evaluations included), fixes the
    # schedule's length to that, and checkpoints the plan (training/budget.py). It
    # re-plans after every tenth of the run, and in the last tenth only checks that the
    # run still ends within the budget (cutting the plan if the machine slowed).
    time_budget_minutes: float = 0.0


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """The kNN monitor (labelled data only): weighted kNN of the backbone features."""

    k: int = defaults.KNN_K
    temperature: float = defaults.KNN_TEMPERATURE
    every_epochs: int = 1  # 0: no kNN monitor


@dataclasses.dataclass(frozen=True)
class FaultConfig:
    """What a run does when a step goes wrong or stops making progress."""

    nonfinite: str = "stop"  # a NaN/Inf loss or gradient: stop | skip (the step)
    max_consecutive_skips: int = 10  # "skip": stop after this many non-finite steps in a row
    step_timeout_s: float = 900.0  # exit with an error after this long without progress; 0: off
    # SIGTERM / SIGINT: the run saves the step it stopped after and exits (code 143 / 130)
    # within this many seconds of the signal; a save that would not finish in time is
    # abandoned and the previous checkpoint stays the latest (parallel/preemption.py).
    grace_period_s: float = 30.0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One of each part (each defaults to its class' defaults)."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    classifier: ClassifierConfig = dataclasses.field(default_factory=ClassifierConfig)
    method: MethodConfig = dataclasses.field(default_factory=FullConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    fault: FaultConfig = dataclasses.field(default_factory=FaultConfig)

    @classmethod
    def of(cls, data=None, model=None, optim=None, train=None, *, classifier=None,
           method=None, monitor=None, fault=None) -> RunConfig:
        """From the parts given (None: that part's defaults)."""
        given = dict(data=data, model=model, optim=optim, train=train,
                     classifier=classifier, method=method, monitor=monitor, fault=fault)
        return cls(**{k: v for k, v in given.items() if v is not None})

    def parts(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


# RunConfig's fields -> their classes' names (``method``: the chosen method's config class)
CONFIG_CLASSES = {"data": "DataConfig", "model": "ModelConfig",
                  "classifier": "ClassifierConfig", "optim": "OptimConfig",
                  "train": "TrainConfig", "monitor": "MonitorConfig", "fault": "FaultConfig"}

# Renamed bindings, old -> new: first when the configs were split by owner, then when
# each method got its own config.
_TEMPERATURE = "FullConfig.temperature (the method's config: SampledConfig, NPIDConfig, ...)"
RENAMED = {
    "ModelConfig.temperature": _TEMPERATURE,
    "ModelConfig.method": "MethodConfig.name",
    "ModelConfig.num_sampled": "SampledConfig.num_sampled",
    "ModelConfig.npid_noise": "NPIDConfig.noise",
    "ModelConfig.npid_momentum": "NPIDConfig.momentum",
    "ModelConfig.npid_proximal": "NPIDConfig.proximal",
    "ModelConfig.npid_z_estimate": "NPIDConfig.z_estimate",
    "ModelConfig.classifier_layout": "ClassifierConfig.layout",
    "ModelConfig.chunk_size": "ClassifierConfig.chunk_size",
    "ModelConfig.unit_norm_classifier": "ClassifierConfig.unit_norm",
    "TrainConfig.init_mode": "ClassifierConfig.init_mode",
    "TrainConfig.smoothing": "FullConfig.smoothing",
    "TrainConfig.num_hard_negatives": "FullConfig.num_hard_negatives",
    "TrainConfig.mining_period": "FullConfig.mining_period",
    "TrainConfig.knn_k": "MonitorConfig.k",
    "TrainConfig.knn_temperature": "MonitorConfig.temperature",
    "TrainConfig.knn_every_epochs": "MonitorConfig.every_epochs",
    "TrainConfig.nonfinite": "FaultConfig.nonfinite",
    "TrainConfig.max_consecutive_skips": "FaultConfig.max_consecutive_skips",
    "TrainConfig.step_timeout_s": "FaultConfig.step_timeout_s",
    "MethodConfig.temperature": _TEMPERATURE,
    "MethodConfig.smoothing": "FullConfig.smoothing",
    "MethodConfig.num_hard_negatives": "FullConfig.num_hard_negatives",
    "MethodConfig.mining_period": "FullConfig.mining_period",
    "MethodConfig.num_sampled": "SampledConfig.num_sampled",
    "MethodConfig.npid_noise": "NPIDConfig.noise",
    "MethodConfig.npid_momentum": "NPIDConfig.momentum",
    "MethodConfig.npid_proximal": "NPIDConfig.proximal",
    "MethodConfig.npid_z_estimate": "NPIDConfig.z_estimate",
}


def _type_problems(config) -> list[str]:
    """Fields whose value does not have the annotated type (a gin binding can set any
    value: ``TrainConfig.epochs = '10'`` must fail here, not deep inside training)."""
    import types
    import typing

    def accepts(kind, value) -> bool:
        if kind is typing.Any:
            return True
        origin = typing.get_origin(kind)
        if origin in (typing.Union, types.UnionType):
            return any(accepts(k, value) for k in typing.get_args(kind))
        if kind is type(None):
            return value is None
        if kind is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if origin is tuple:  # gin writes tuples; a list is accepted too
            args = typing.get_args(kind)
            if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
                return (isinstance(value, (tuple, list))
                        and all(accepts(args[0], v) for v in value))
            return (isinstance(value, (tuple, list)) and len(value) == len(args)
                    and all(accepts(k, v) for k, v in zip(args, value)))
        if origin is not None:
            return isinstance(value, origin)
        return isinstance(value, kind)

    hints = typing.get_type_hints(type(config))
    problems = []
    for field in dataclasses.fields(config):
        kind, value = hints[field.name], getattr(config, field.name)
        if not accepts(kind, value):
            problems.append(f"{type(config).__name__}.{field.name} must be "
                            f"{getattr(kind, '__name__', kind)}; got {value!r}")
    return problems


def _schedule_problem(schedule, epochs: int) -> str | None:
    """What is wrong with a ``DataConfig.train_size_schedule`` for a run of ``epochs``."""
    example = "e.g. ((0, 16), (64, 24))"
    if not schedule:
        return f"needs at least one (first_epoch, side) pair, {example}; got {schedule!r}"
    firsts = [first for first, _ in schedule]
    if firsts[0] != 0:
        return f"must start at epoch 0, {example}; got {schedule!r}"
    if any(b <= a for a, b in zip(firsts, firsts[1:])):
        return f"epochs must rise, {example}; got {schedule!r}"
    if firsts[-1] >= epochs:
        return (f"a stage starts at epoch {firsts[-1]}, after the run's last epoch "
                f"{epochs - 1} (TrainConfig.epochs = {epochs}); got {schedule!r}")
    if any(side < 8 for _, side in schedule):
        return f"sides must be >= 8; got {schedule!r}"
    return None


def validate(config: RunConfig) -> None:
    """Fails before any work on values that would only break later (a gin binding or
    flag can set any of them): first the types, then the values."""
    wrong = [p for part in config.parts() for p in _type_problems(part)]
    if wrong:
        raise ValueError("bad configuration (wrong type): " + "; ".join(wrong))
    data, model, classifier, method, optim, train, monitor, fault = config.parts()
    problems = []

    def need(ok, message):
        if not ok:
            problems.append(message)

    need(train.epochs >= 1, f"TrainConfig.epochs must be >= 1; got {train.epochs}")
    try:
        data.augment_config()
    except (ValueError, TypeError) as err:
        need(False, f"DataConfig augmentation: {err}")
    need(train.batch_size >= 1, f"TrainConfig.batch_size must be >= 1; got {train.batch_size}")
    need(classifier.init_mode in INIT_MODES, f"ClassifierConfig.init_mode must be one of "
         f"{INIT_MODES}; got {classifier.init_mode!r}")
    need(fault.nonfinite in ("stop", "skip"), "FaultConfig.nonfinite must be 'stop' or "
         f"'skip'; got {fault.nonfinite!r}")
    need(train.keep_checkpoints >= 1, "TrainConfig.keep_checkpoints must be >= 1")
    need(train.checkpoint_every_steps >= 0, "TrainConfig.checkpoint_every_steps must be >= 0")
    need(train.checkpoint_every_epochs >= 1, "TrainConfig.checkpoint_every_epochs must be >= 1 "
         "(1: a checkpoint at every epoch's end)")
    need(fault.step_timeout_s >= 0, "FaultConfig.step_timeout_s must be >= 0")
    need(fault.grace_period_s > 0, "FaultConfig.grace_period_s must be > 0 (seconds from "
         f"a SIGTERM to the exit); got {fault.grace_period_s}")
    need(train.max_steps >= 0, "TrainConfig.max_steps must be >= 0 (0: no limit)")
    need(monitor.every_epochs >= 0, "MonitorConfig.every_epochs must be >= 0")
    need(train.time_budget_minutes >= 0, "TrainConfig.time_budget_minutes must be >= 0 "
         f"(0: no budget); got {train.time_budget_minutes}")
    need(not (train.time_budget_minutes and data.train_size_schedule),
         "TrainConfig.time_budget_minutes cannot plan a DataConfig.train_size_schedule "
         "(its stages cost differently and are fixed by epoch): set one of the two")
    need(monitor.k >= 1, f"MonitorConfig.k must be >= 1; got {monitor.k}")
    need(monitor.temperature > 0, f"MonitorConfig.temperature must be > 0; got "
         f"{monitor.temperature}")
    need(classifier.layout in ("sharded", "replicated"), "ClassifierConfig.layout "
         f"must be 'sharded' or 'replicated'; got {classifier.layout!r}")
    need(model.use_head or not model.head_output_bn, "ModelConfig.head_output_bn = True "
         "needs the MLP head (ModelConfig.use_head = True)")
    need(model.precision in models.PRECISIONS, "ModelConfig.precision must be one of "
         f"{models.PRECISIONS}; got {model.precision!r}")
    need(optim.initial_loss_scale >= 1, "OptimConfig.initial_loss_scale must be >= 1")
    need(optim.loss_scale_growth_steps >= 1, "OptimConfig.loss_scale_growth_steps must be "
         ">= 1")
    need(model.embedding_dim >= 1, "ModelConfig.embedding_dim must be >= 1")
    need(model.batchnorm_kernel in ("auto", "closed_form"), "ModelConfig.batchnorm_kernel "
         f"must be 'auto' or 'closed_form'; got {model.batchnorm_kernel!r}")
    need(classifier.chunk_size is None or classifier.chunk_size >= 1,
         "ClassifierConfig.chunk_size must be None or >= 1")
    need(optim.base_learning_rate > 0, "OptimConfig.base_learning_rate must be > 0")
    need(0 <= optim.momentum < 1, f"OptimConfig.momentum must be in [0, 1); got "
         f"{optim.momentum}")
    need(optim.weight_decay >= 0, "OptimConfig.weight_decay must be >= 0")
    need(optim.warmup_epochs >= 0, "OptimConfig.warmup_epochs must be >= 0")
    need(optim.classifier_lr_scale > 0, "OptimConfig.classifier_lr_scale must be > 0; got "
         f"{optim.classifier_lr_scale}")
    need(optim.classifier_weight_decay is None or optim.classifier_weight_decay >= 0,
         "OptimConfig.classifier_weight_decay must be None or >= 0; got "
         f"{optim.classifier_weight_decay}")
    need(data.image_size >= 8, f"DataConfig.image_size must be >= 8; got {data.image_size}")
    need(data.train_image_size is None or data.train_image_size >= 8,
         f"DataConfig.train_image_size must be None or >= 8; got {data.train_image_size}")
    need(not (data.train_size_schedule and data.train_image_size),
         "set DataConfig.train_size_schedule or DataConfig.train_image_size, not both")
    schedule_problem = (None if data.train_size_schedule is None
                        else _schedule_problem(data.train_size_schedule, train.epochs))
    need(schedule_problem is None, f"DataConfig.train_size_schedule: {schedule_problem}")
    need(data.views in (1, 2), f"DataConfig.views must be 1 or 2; got {data.views}")
    need(0 <= data.holdout_fraction < 1, "DataConfig.holdout_fraction must be in [0, 1)")
    need(data.holdout_seed is None or data.holdout_seed >= 0,
         f"DataConfig.holdout_seed must be None (the training seed) or >= 0; got "
         f"{data.holdout_seed!r}")
    need(model.backbone in models.backbone_names(), f"ModelConfig.backbone must be one of "
         f"{models.backbone_names()}; got {model.backbone!r}")
    registered = isinstance(method, MethodConfig) and method.method in METHODS
    need(registered, f"the run's method config {method!r} configures no registered method "
         f"({', '.join(METHODS)})")
    if registered:  # the method checks its own values
        problems.extend(method.problems())
        need(data.views >= method.views_needed, f"method {method.method!r} needs "
             f"DataConfig.views >= {method.views_needed}; got {data.views}")
    if problems:
        raise ValueError("bad configuration: " + "; ".join(problems))


def validate_against_data(config: RunConfig, n: int) -> None:
    """The values that must be smaller than the number of training images N."""
    problems = config.method.problems_with_data(n)
    if problems:
        raise ValueError(f"bad configuration for {config.data.dataset} (N = {n} training "
                         "images): " + "; ".join(problems))
