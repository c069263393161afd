"""The epoch loop, read top to bottom (the entry point is ``pretrain.run_pretraining``).

Builds data, encoder, classifier and optimizer on the mesh, restores the latest
checkpoint from ``model_dir`` if there is one (a rerun resumes automatically), and drives
``keras.callbacks.CallbackList`` so ours and the user's callbacks run on the usual hooks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import tensorflow as tf
from absl import logging

from tf_instcls import data as data_lib
from tf_instcls import defaults, models, parallel
from tf_instcls.methods import METHODS, Method, trains_w
from tf_instcls.parallel import layouts, watchdog
from tf_instcls.training import checkpoints, stages
from tf_instcls.training.optimizer import MomentumSGD
from tf_instcls.training.prior import INIT_MODES
from tf_instcls.training.schedules import scaled_learning_rate, warmup_cosine
from tf_instcls.training.step import make_train_step


@dataclasses.dataclass
class DataConfig:
    """Where the images come from and how they are augmented."""

    dataset: str = "digits"  # digits | npz:PATH | folder:PATH | tfds:NAME[:SPLIT]
    eval_dataset: str | None = None  # labelled kNN queries; None: hold out a part
    # used when eval_dataset is None and labels exist
    holdout_fraction: float = defaults.HOLDOUT_FRACTION
    image_size: int = 32
    # Augmentation. None: the paper's default for the image size (data.default_config:
    # crops of 20-100% and no blur below 96 px; 8-100% and blur p = 0.5 from 96 px).
    crop_scale: tuple[float, float] | None = None
    blur_prob: float | None = None
    jitter_strength: tuple[float, float, float, float] | None = None  # (0.4, 0.4, 0.4, 0.1)
    jitter_prob: float | None = None  # 0.8
    grayscale_prob: float | None = None  # 0.2
    skip_corrupt_images: bool = False

    def augment_config(self) -> data_lib.AugmentConfig:
        """The training views' augmentation: the size's defaults, then the values set."""
        overrides = {name: tuple(value) if isinstance(value, list) else value
                     for name in ("crop_scale", "blur_prob", "jitter_strength", "jitter_prob",
                                  "grayscale_prob")
                     if (value := getattr(self, name)) is not None}
        return dataclasses.replace(data_lib.default_config(self.image_size), **overrides)


@dataclasses.dataclass
class ModelConfig:
    backbone: str = "convnet_small"
    backbone_width: int | None = None
    use_head: bool = True
    head_hidden_dim: int = defaults.HEAD_HIDDEN_DIM
    # Beyond the paper: the head ends in a BatchNormalization without scale and shift
    # (SimSiam's / MoCo v3's projector), so embeddings and the prior's rows of W are
    # centred instead of sitting in a cone. False: the paper's head.
    head_output_bn: bool = False
    embedding_dim: int = defaults.EMBEDDING_DIM
    # Every method's temperature: the cosine softmax's, NPID's (0.07: npid.gin) and
    # SimCLR's NT-Xent (0.5: simclr.gin). One knob, so none is silently ignored.
    temperature: float = defaults.TEMPERATURE
    classifier_layout: str = "sharded"  # sharded (DHP) | replicated (DDP)
    chunk_size: int | None = None
    # Keep W's rows at unit norm (after the prior and after every step); see
    # InstanceClassifier(unit_norm_rows). False: the paper's unconstrained W.
    unit_norm_classifier: bool = False
    # full: the paper's full instance classification; sampled: softmax over the batch's
    # classes + num_sampled uniform ones (Table 3); npid: memory bank + NCE (NPID)
    method: str = "full"
    num_sampled: int = 1024  # S of "sampled"
    npid_noise: int = 4096  # m of NCE; 0: the full non-parametric softmax
    npid_momentum: float = 0.5  # memory update v <- normalise(mu v + (1 - mu) f)
    npid_proximal: float = 0.0  # lambda of NPID's proximal term (paper: 30)
    # NCE's normalising constant Z: "step" (default) uses every step's own estimate
    # (self-normalised NCE: the gradient is bounded by 2 / t); "first" estimates it once,
    # on the first step, as NPID's code; "epoch" re-estimates it on each epoch's first
    # step. Measured on the 4,068-image split (WORKSPACE.md, NPID with NCE): "first"
    # diverges (the bank fills in 32 steps, Z stays that of a random bank), "epoch"
    # collapses the features to one direction, "step" neither.
    npid_z_estimate: str = "step"
    # The backbone and head's compute dtype (Keras mixed-precision policy): "float32",
    # "mixed_bfloat16" (bfloat16 compute, float32 variables) or "mixed_float16" (float16
    # compute with dynamic loss scaling: OptimConfig.initial_loss_scale). W, its
    # momentum, the softmax and both encoder outputs stay float32, so checkpoints,
    # evaluation and the export are float32 whatever is set here.
    precision: str = "float32"


@dataclasses.dataclass
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


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 256  # instances per step (each gives two views)
    seed: int = 0
    checkpoint_every_steps: int = 0  # 0: only at epoch ends
    keep_checkpoints: int = 3
    knn_k: int = defaults.KNN_K
    knn_temperature: float = defaults.KNN_TEMPERATURE
    knn_every_epochs: int = 1  # 0: no kNN monitor
    deterministic: bool = False
    log_steps: bool = False  # write steps.jsonl (one line per step)
    init_mode: str = "prior_running_bn"  # gaussian | prior_fixed_bn | prior_running_bn
    num_hard_negatives: int = 100  # K of Eq. 2; 0: no mining (needs smoothing = 0)
    smoothing: float = 0.2  # alpha of Eq. 2-3; 0 disables smoothing
    mining_period: int = 1  # epochs between hard-negative mining (the paper: 1)
    nonfinite: str = "stop"  # a NaN/Inf loss or gradient: stop | skip (the step)
    max_consecutive_skips: int = 10  # "skip": stop after this many non-finite steps in a row
    step_timeout_s: float = 900.0  # exit with an error after this long without progress; 0: off
    verbose: int = 1
    # Stop (with a checkpoint) once the global step reaches this; 0: no limit. The
    # schedule is still that of `epochs`, so rerunning with a larger max_steps (or 0)
    # continues the same run exactly: scale runs and smoke tests of long configs.
    max_steps: int = 0


class WorkerLostError(RuntimeError):
    """Another process of a multi-client run died or became unreachable."""


@dataclasses.dataclass
class TrainState:
    """The live objects of one run (callbacks.default_callbacks gives each callback the
    parts it reads)."""

    model_dir: str
    mesh: parallel.Mesh
    encoder: keras.Model
    classifier: parallel.InstanceClassifier
    optimizer: MomentumSGD
    global_step: tf.Variable
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    train_source: data_lib.ImageSource
    eval_source: data_lib.ImageSource | None
    steps_per_epoch: int
    epochs: int
    image_size: int
    run_info: dict
    epoch: int = 0
    hard_table: tf.Variable | None = None  # [N, K] hard negatives, laid out like W
    hard_table_epoch: tf.Variable | None = None  # the epoch the table was mined at
    epoch_results: dict = dataclasses.field(default_factory=dict)  # callbacks add here
    last_step: int = 0  # host copy of global_step, readable when the device is not
    model_config: ModelConfig | None = None
    method: Method | None = None  # its loss, post-update and own state (NPID's Z)
    loss_scale: tuple | None = None  # mixed_float16: (scale, finite steps since a change)

    @property
    def step(self) -> int:
        return int(parallel.to_numpy(self.global_step))


CONFIG_CLASSES = ("DataConfig", "ModelConfig", "OptimConfig", "TrainConfig")


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


def validate_configs(data: DataConfig, model: ModelConfig, optim: OptimConfig,
                     train: TrainConfig) -> None:
    """Fails before any work on values that would only break later (a gin binding or
    flag can set any of them): first the types, then the values."""

    wrong = [p for config in (data, model, optim, train) for p in _type_problems(config)]
    if wrong:
        raise ValueError("bad configuration (wrong type): " + "; ".join(wrong))

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
    need(0 <= train.smoothing < 1, f"TrainConfig.smoothing must be in [0, 1); got "
         f"{train.smoothing}")
    need(train.num_hard_negatives >= 0, "TrainConfig.num_hard_negatives must be >= 0")
    need(train.init_mode in INIT_MODES, f"TrainConfig.init_mode must be one of {INIT_MODES}; "
         f"got {train.init_mode!r}")
    need(train.nonfinite in ("stop", "skip"), "TrainConfig.nonfinite must be 'stop' or "
         f"'skip'; got {train.nonfinite!r}")
    need(train.keep_checkpoints >= 1, "TrainConfig.keep_checkpoints must be >= 1")
    need(train.checkpoint_every_steps >= 0, "TrainConfig.checkpoint_every_steps must be >= 0")
    need(train.mining_period >= 1, "TrainConfig.mining_period must be >= 1")
    need(train.step_timeout_s >= 0, "TrainConfig.step_timeout_s must be >= 0")
    need(train.max_steps >= 0, "TrainConfig.max_steps must be >= 0 (0: no limit)")
    need(train.knn_every_epochs >= 0, "TrainConfig.knn_every_epochs must be >= 0")
    need(model.classifier_layout in ("sharded", "replicated"), "ModelConfig.classifier_layout "
         f"must be 'sharded' or 'replicated'; got {model.classifier_layout!r}")
    need(model.temperature > 0, f"ModelConfig.temperature must be > 0; got {model.temperature}")
    need(model.method in METHODS, f"ModelConfig.method must be one of {tuple(METHODS)}; got "
         f"{model.method!r}")
    need(model.num_sampled >= 1, "ModelConfig.num_sampled must be >= 1")
    need(model.npid_noise >= 0, "ModelConfig.npid_noise must be >= 0")
    need(model.npid_z_estimate in ("first", "epoch", "step"), "ModelConfig.npid_z_estimate "
         f"must be 'first', 'epoch' or 'step'; got {model.npid_z_estimate!r}")
    need(0 <= model.npid_momentum < 1, "ModelConfig.npid_momentum must be in [0, 1)")
    need(train.smoothing == 0 or train.num_hard_negatives >= 1, "TrainConfig.smoothing = "
         f"{train.smoothing} needs hard negatives: set TrainConfig.num_hard_negatives >= 1 "
         "(the paper: 100) or smoothing = 0")
    need(model.use_head or not model.head_output_bn, "ModelConfig.head_output_bn = True "
         "needs the MLP head (ModelConfig.use_head = True)")
    need(model.method == "full" or train.smoothing == 0,
         f"ModelConfig.method = {model.method!r} has no label smoothing: set "
         "TrainConfig.smoothing = 0")
    need(model.precision in ("float32", "mixed_bfloat16", "mixed_float16"),
         "ModelConfig.precision must be 'float32', 'mixed_bfloat16' or 'mixed_float16'; "
         f"got {model.precision!r}")
    need(optim.initial_loss_scale >= 1, "OptimConfig.initial_loss_scale must be >= 1")
    need(optim.loss_scale_growth_steps >= 1, "OptimConfig.loss_scale_growth_steps must be "
         ">= 1")
    need(model.embedding_dim >= 1, "ModelConfig.embedding_dim must be >= 1")
    need(model.chunk_size is None or model.chunk_size >= 1, "ModelConfig.chunk_size must be "
         "None or >= 1")
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
    need(0 <= data.holdout_fraction < 1, "DataConfig.holdout_fraction must be in [0, 1)")
    need(model.backbone in models.backbone_names(), f"ModelConfig.backbone must be one of "
         f"{models.backbone_names()}; got {model.backbone!r}")
    if problems:
        raise ValueError("bad configuration: " + "; ".join(problems))


def validate_against_data(model: ModelConfig, train: TrainConfig, n: int, dataset: str):
    """The values that must be smaller than the number of training images N."""
    problems = []
    if train.smoothing > 0 and train.num_hard_negatives >= n:
        problems.append(f"TrainConfig.num_hard_negatives = {train.num_hard_negatives} must be "
                        f"< N (each image has N - 1 others)")
    if model.method == "sampled" and model.num_sampled >= n:
        problems.append(f"ModelConfig.num_sampled = {model.num_sampled} must be < N: a "
                        "sample that size covers every class, which is method 'full'")
    if model.method == "npid" and model.npid_noise >= n:
        problems.append(f"ModelConfig.npid_noise = {model.npid_noise} must be < N (NPID "
                        "draws m << N noise samples; m = 0 is the full non-parametric softmax)")
    if problems:
        raise ValueError(f"bad configuration for {dataset} (N = {n} training images): "
                         + "; ".join(problems))


def _sources(cfg: DataConfig, seed: int):
    source = data_lib.load_source(cfg.dataset, skip_corrupt=cfg.skip_corrupt_images)
    if cfg.eval_dataset:
        return source, data_lib.load_source(cfg.eval_dataset)
    if source.labels is not None and cfg.holdout_fraction > 0:
        return data_lib.split_holdout(source, cfg.holdout_fraction, seed)
    return source, None


def build_state(model_dir, data: DataConfig, model: ModelConfig, optim: OptimConfig,
                train: TrainConfig, mesh) -> TrainState:
    """Everything of a run, restored from ``model_dir`` when a checkpoint exists."""
    validate_configs(data, model, optim, train)
    if train.batch_size % mesh.size:
        raise ValueError(f"TrainConfig.batch_size {train.batch_size} is not divisible by the "
                         f"{mesh.size} devices of the mesh: use a multiple of {mesh.size}"
                         + (" (or fewer devices)" if mesh.size > train.batch_size else ""))
    train_source, eval_source = _sources(data, train.seed)
    try:
        steps = data_lib.steps_per_epoch(train_source.num_images, train.batch_size)
    except ValueError as err:
        raise ValueError(f"{data.dataset}: {err}; use TrainConfig.batch_size <= "
                         f"{train_source.num_images}") from None
    validate_against_data(model, train, train_source.num_images, data.dataset)
    os.makedirs(model_dir, exist_ok=True)
    run_info = {
        "num_instances": train_source.num_images, "embedding_dim": model.embedding_dim,
        "backbone": model.backbone, "backbone_width": model.backbone_width,
        "use_head": model.use_head, "image_size": data.image_size,
        "dataset": data.dataset, "dataset_fingerprint": train_source.fingerprint(),
        "batch_size": train.batch_size, "seed": train.seed, "init_mode": train.init_mode,
        "num_hard_negatives": train.num_hard_negatives if train.smoothing > 0 else 0,
        "head_hidden_dim": model.head_hidden_dim if model.use_head else None,
        "head_output_bn": model.head_output_bn,
        "method": model.method,
        # what the evaluation tools need to rebuild the same train / held-out split
        "eval_dataset": data.eval_dataset, "holdout_fraction": data.holdout_fraction,
    }
    _check_run_info(model_dir, run_info)
    keras.utils.set_random_seed(train.seed)  # the backbone's initial weights
    encoder = models.build_encoder(
        model.backbone, data.image_size, embedding_dim=model.embedding_dim,
        head_hidden_dim=model.head_hidden_dim, use_head=model.use_head,
        backbone_width=model.backbone_width, precision=model.precision,
        head_output_bn=model.head_output_bn,
    )
    encoder_variables = layouts.replicate_model_variables(encoder, mesh)
    classifier = parallel.InstanceClassifier(
        train_source.num_images, model.embedding_dim, mesh=mesh,
        layout=model.classifier_layout, temperature=model.temperature,
        chunk_size=model.chunk_size, seed=train.seed,
        unit_norm_rows=model.unit_norm_classifier and trains_w(model.method),
    )
    optimizer = MomentumSGD(momentum=optim.momentum, weight_decay=optim.weight_decay)
    optimizer.build([layouts.variable_handle(v) for v in encoder.trainable_variables])
    if trains_w(model.method):  # NPID's bank (W's place) is not trained; SimCLR has no W
        optimizer.build(classifier.distributed_variables,
                        learning_rate_scale=optim.classifier_lr_scale,
                        weight_decay=optim.classifier_weight_decay,
                        project=classifier.project_rows if classifier.unit_norm_rows else None)
    global_step = layouts.replicated_variable(0, mesh, "global_step", tf.int64)
    hard_table = hard_table_epoch = None
    extra = {}
    if train.num_hard_negatives > 0 and train.smoothing > 0:
        if train.num_hard_negatives >= train_source.num_images:
            raise ValueError(f"num_hard_negatives {train.num_hard_negatives} must be < N = "
                             f"{train_source.num_images}")
        hard_table = classifier.build_table(train.num_hard_negatives)
        hard_table_epoch = layouts.replicated_variable(-1, mesh, "hard_table_epoch", tf.int64)
        extra = dict(hard_negatives=hard_table, hard_negatives_epoch=hard_table_epoch)
    method = METHODS[model.method](model, classifier, seed=train.seed, steps_per_epoch=steps,
                                  smoothing=train.smoothing)
    extra.update(method.variables())  # the method's own state (NPID's Z) is checkpointed
    loss_scale = None
    if model.precision == "mixed_float16":
        loss_scale = (layouts.replicated_variable(float(optim.initial_loss_scale), mesh,
                                                  "loss_scale", tf.float32),
                      layouts.replicated_variable(0, mesh, "loss_scale_good_steps",
                                                  tf.int64))
        extra.update(loss_scale=loss_scale[0], loss_scale_good_steps=loss_scale[1])
    checkpoint = tf.train.Checkpoint(
        encoder=encoder_variables, class_weights=classifier.class_weights, optimizer=optimizer,
        global_step=global_step, **extra,
    )
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    # Find (and set aside) damaged checkpoints before the manager lists the directory.
    latest = checkpoints.newest_valid(ckpt_dir, move_damaged=parallel.process_count() == 1)
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir,
                                         max_to_keep=train.keep_checkpoints)
    if latest:
        with stages.timed(model_dir, "restore", checkpoint=os.path.basename(latest),
                          bytes=stages.directory_bytes(
                              ckpt_dir, os.path.basename(latest) + ".")) as fields:
            how = checkpoints.restore(
                latest, checkpoint, classifier=classifier,
                encoder_variables=encoder_variables, optimizer=optimizer,
                global_step=global_step, hard_table=hard_table,
                hard_table_epoch=hard_table_epoch, loss_scale=loss_scale)
            fields["step"] = int(parallel.to_numpy(global_step))
        print(f"resumed from {latest} (step {fields['step']}, {how} restore on {mesh.size} "
              "devices)", flush=True)
    return TrainState(
        model_dir=model_dir, mesh=mesh, encoder=encoder, classifier=classifier,
        optimizer=optimizer, global_step=global_step, checkpoint=checkpoint, manager=manager,
        train_source=train_source, eval_source=eval_source, steps_per_epoch=steps,
        epochs=train.epochs, image_size=data.image_size, run_info=run_info,
        hard_table=hard_table, hard_table_epoch=hard_table_epoch, model_config=model,
        method=method, loss_scale=loss_scale,
    )


def _check_run_info(model_dir: str, run_info: dict) -> None:
    """A model_dir belongs to one run: refuse to resume with a different N, D, data..."""
    path = os.path.join(model_dir, "run_info.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        # Keys an older version did not write are not compared (forward compatible).
        diff = {k: (previous[k], v) for k, v in run_info.items()
                if k in previous and previous[k] != v}
        if diff:
            raise ValueError(
                f"{model_dir} holds a run with a different configuration; differences "
                f"(checkpoint, now): {diff}. Use a new --model_dir."
            )
        return
    if parallel.process_index() != 0:  # one writer per file: process 0 writes it
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(run_info, f, indent=1)
    os.replace(tmp, path)


def _non_finite(state, train, epoch, batch_index, logs, skips) -> int:
    """The non-finite guard's decision; the step already left every variable as it was."""
    where = (f"step {state.last_step} (epoch {epoch}, batch {batch_index}): loss "
             f"{logs.get('loss')}")
    if train.nonfinite == "skip" and skips + 1 < train.max_consecutive_skips:
        logging.warning("non-finite loss or gradient at %s; step skipped (W, backbone, "
                        "momentum and BN statistics unchanged)", where)
        return skips + 1
    reason = ("" if train.nonfinite == "stop" else
              f" after {train.max_consecutive_skips} consecutive skipped steps")
    raise FloatingPointError(
        f"non-finite loss or gradient at {where}{reason}. Nothing non-finite reached W or "
        f"the checkpoints; the latest checkpoint is {state.manager.latest_checkpoint}. "
        "Lower the learning rate, check the data, or set TrainConfig.nonfinite = 'skip'.")


def run(model_dir: str, data: DataConfig, model: ModelConfig, optim: OptimConfig,
        train: TrainConfig, mesh, *, make_callbacks, callbacks=()) -> dict:
    """Builds the run's state, then its epoch loop; returns the last epoch's logs.

    ``make_callbacks(state) -> list`` gives the run's own callbacks once the state
    exists (``pretrain.run_pretraining`` passes ``callbacks.default_callbacks``: the loop
    does not import the layers above it); ``callbacks`` (the user's) run after them.
    A watchdog (``TrainConfig.step_timeout_s``) ends the process if progress stops; in
    a multi-client run a lost peer raises :class:`WorkerLostError`.
    """

    if train.deterministic:
        tf.config.experimental.enable_op_determinism()
    with stages.timed(model_dir, "startup", devices=mesh.size) as fields:
        state = build_state(model_dir, data, model, optim, train, mesh)
        fields.update(num_instances=state.train_source.num_images, step=state.step)
    if not train.step_timeout_s:
        return _train(state, data, optim, train, mesh, [*make_callbacks(state), *callbacks])
    describe = lambda: (f"Last step {state.last_step}; latest checkpoint "  # noqa: E731
                        f"{state.manager.latest_checkpoint}.")
    with watchdog.Watchdog(train.step_timeout_s, describe):
        try:
            return _train(state, data, optim, train, mesh,
                          [*make_callbacks(state), *callbacks])
        except parallel.PEER_ERRORS as err:
            if not parallel.is_multi_client():
                raise
            raise WorkerLostError(
                f"process {parallel.process_index()} of {parallel.process_count()} lost "
                f"contact with another process of this run after step {state.last_step} "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). The latest "
                f"complete checkpoint is {state.manager.latest_checkpoint}; restart every "
                "process with the same --model_dir to resume from it.") from err


def _train(state, data, optim, train, mesh, callbacks) -> dict:
    """The epoch loop of :func:`run`."""
    peak_lr = scaled_learning_rate(optim.base_learning_rate, optim.base_batch_size,
                                   train.batch_size)
    total_steps = train.epochs * state.steps_per_epoch
    warmup_steps = int(optim.warmup_epochs * state.steps_per_epoch)
    lr_fn = lambda step: warmup_cosine(  # noqa: E731
        step, peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps
    )
    step_fn = make_train_step(state.encoder, state.classifier, state.optimizer, lr_fn,
                              state.method, hard_table=state.hard_table,
                              loss_scale=state.loss_scale,
                              loss_scale_growth_steps=optim.loss_scale_growth_steps)
    augment = data.augment_config()
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=False, add_progbar=False, model=state.encoder
    )
    image_layout = layouts.batch_layout(mesh, 5)
    id_layout = layouts.batch_layout(mesh, 1)
    process_index, process_count = parallel.process_index(), parallel.process_count()

    start = state.last_step = state.step
    logs: dict = {}
    stop_at = train.max_steps or total_steps
    if start >= stop_at and start < total_steps:
        print(f"nothing to do: the run in {state.model_dir} is at step {start}, at its "
              f"max_steps {train.max_steps} (of {total_steps}); raise --max_steps or set "
              "it to 0 to go on", flush=True)
        return {"stopped_at_step": start}
    callback_list.on_train_begin({"step": start})
    start_epoch = start // state.steps_per_epoch
    step_seconds: list[float] = []  # this process's step times (its first step traces)
    traced = False
    # One pipeline for every remaining epoch: built once, prefetching across epochs.
    batches = iter(data_lib.make_train_dataset(
        state.train_source, augment, global_batch_size=train.batch_size, epoch=start_epoch,
        start_step=start - start_epoch * state.steps_per_epoch, seed=train.seed,
        process_index=process_index, process_count=process_count,
        last_epoch=max(train.epochs, start_epoch + 1),
    )) if start_epoch < train.epochs else iter(())
    for epoch in range(start_epoch, train.epochs):
        state.epoch = epoch
        state.epoch_results.clear()  # callbacks add results for this epoch here (in place:
        # they hold this dict)
        epoch_start = time.perf_counter()
        first = state.step - epoch * state.steps_per_epoch
        callback_list.on_epoch_begin(epoch)
        sums = {"loss": 0.0, "instance_acc": 0.0}
        count = skips = 0
        tick = time.perf_counter()
        last = min(state.steps_per_epoch, stop_at - epoch * state.steps_per_epoch)
        for batch_index in range(first, last):
            batch = next(batches)
            callback_list.on_train_batch_begin(batch_index)
            metrics = step_fn(
                layouts.pack_local_batch(batch["images"], image_layout),
                layouts.pack_local_batch(batch["ids"], id_layout),
                state.global_step,
            )
            finite = bool(parallel.to_numpy(metrics.pop("finite")))
            state.last_step += 1
            watchdog.beat()
            logs = {k: float(parallel.to_numpy(v)) for k, v in metrics.items()}
            if not finite:
                skips = _non_finite(state, train, epoch, batch_index, logs, skips)
                if train.nonfinite == "skip":
                    continue
            else:
                skips = 0
            now = time.perf_counter()
            logs["images_per_sec"] = train.batch_size / max(now - tick, 1e-9)
            if traced:
                step_seconds.append(now - tick)
            traced = True
            tick = now
            for key in sums:
                sums[key] += logs[key]
            count += 1
            callback_list.on_train_batch_end(batch_index, logs)
        _record_steps(state.model_dir, step_seconds, epoch=epoch, step=state.step)
        step_seconds = []
        # The epoch's means over its finite steps; an epoch whose every step was
        # skipped has none (not 0.0) and says so.
        epoch_logs = {k: v / count for k, v in sums.items()} if count else {}
        if last < state.steps_per_epoch:  # max_steps reached inside this epoch
            return _stop_at_max_steps(callback_list, state, total_steps, epoch_logs)
        if count < state.steps_per_epoch - first:
            epoch_logs["skipped_steps"] = state.steps_per_epoch - first - count
            if not count:
                logging.warning("epoch %d: every step was skipped (non-finite loss or "
                                "gradient); no loss or instance accuracy is recorded for it",
                                epoch + 1)
        if "loss_scale" in logs:  # mixed_float16: the dynamic loss scale at the epoch's end
            epoch_logs["loss_scale"] = logs["loss_scale"]
        epoch_logs.update(epoch=epoch, lr=logs.get("lr", 0.0), step=state.step,
                          train_seconds=time.perf_counter() - epoch_start,
                          **state.epoch_results)  # e.g. mining_seconds
        if "mining_seconds" in state.epoch_results:  # mining's share of the epoch's time
            epoch_logs["mining_share"] = (state.epoch_results["mining_seconds"]
                                          / max(epoch_logs["train_seconds"], 1e-9))
        callback_list.on_epoch_end(epoch, epoch_logs)  # Keras passes callbacks a copy
        logs = {**epoch_logs, **state.epoch_results}
        if state.step >= stop_at and state.step < total_steps:  # max_steps at an epoch end
            return _stop_at_max_steps(callback_list, state, total_steps, logs)
    callback_list.on_train_end(logs)
    return logs


def _stop_at_max_steps(callback_list, state, total_steps: int, logs: dict) -> dict:
    """Ends a run at TrainConfig.max_steps (the checkpoint saver writes the step) and
    says how to go on."""
    callback_list.on_train_end({"stopped_at_step": state.step})
    print(f"stopped at step {state.step} of {total_steps} (TrainConfig.max_steps); rerun "
          "with the same model_dir and a larger max_steps (or 0) to go on", flush=True)
    return {**logs, "stopped_at_step": state.step}


def _record_steps(model_dir, seconds: list, **extra) -> None:
    """A ``steps`` record in stages.jsonl: how many steps and how long each took."""
    if not seconds:
        return
    ordered = sorted(seconds)
    stages.record(model_dir, "steps", sum(seconds), count=len(seconds),
                  median_s=round(ordered[len(ordered) // 2], 5),
                  p90_s=round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 5),
                  **extra)
