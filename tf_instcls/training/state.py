"""A run's state: its owners (data, encoder, W, optimizer, method, mined table, loss
scale, time budget) built from their configs on the mesh, checkpointed together, and
restored from the latest checkpoint of ``model_dir`` when there is one (a rerun resumes
automatically). ``training/loop.py`` runs the epochs over it.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import tensorflow as tf
from absl import logging

from tf_instcls import data as data_lib
from tf_instcls import models, parallel
from tf_instcls.methods import Method, build_method, method_class
from tf_instcls.parallel import layouts
from tf_instcls.training import checkpoints, stages
from tf_instcls.training.budget import TimeBudget
from tf_instcls.training.config import RunConfig, validate, validate_against_data
from tf_instcls.training.loss_scale import DynamicLossScale
from tf_instcls.training.optimizer import MomentumSGD


@dataclasses.dataclass
class HardNegativeTable:
    """The mined [N, K] hard negatives (row-sharded like W) and the epoch they were
    mined at (-1: never); both checkpointed."""

    table: tf.Variable
    epoch: tf.Variable

    def variables(self) -> dict:
        return {"hard_negatives": self.table, "hard_negatives_epoch": self.epoch}


@dataclasses.dataclass
class TrainState:
    """The live objects of one run (callbacks.default_callbacks gives each callback the
    parts it reads)."""

    model_dir: str
    mesh: parallel.Mesh
    encoder: keras.Model
    classifier: parallel.InstanceClassifier
    optimizer: MomentumSGD
    method: Method  # its loss, post-update and own state (NPID's Z)
    global_step: tf.Variable
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    train_source: data_lib.ImageSource
    eval_source: data_lib.ImageSource | None
    steps_per_epoch: int
    epochs: int  # the run's length (a time budget's plan may change it)
    run_info: dict
    hard_negatives: HardNegativeTable | None = None  # when the method mines
    loss_scale: DynamicLossScale | None = None  # mixed_float16
    budget: TimeBudget | None = None  # TrainConfig.time_budget_minutes
    epoch_results: dict = dataclasses.field(default_factory=dict)  # callbacks add here
    last_step: int = 0  # host copy of global_step, readable when the device is not

    @property
    def step(self) -> int:
        return int(parallel.to_numpy(self.global_step))


def validate_configs(data=None, model=None, optim=None, train=None, *, classifier=None,
                     method=None, monitor=None, fault=None) -> None:
    """``config.validate`` of the parts given (None: that part's defaults)."""
    validate(RunConfig.of(data, model, optim, train, classifier=classifier, method=method,
                          monitor=monitor, fault=fault))


def _sources(cfg, seed: int):
    source = data_lib.load_source(cfg.dataset, skip_corrupt=cfg.skip_corrupt_images)
    if cfg.eval_dataset:
        return source, data_lib.load_source(cfg.eval_dataset)
    if source.labels is not None and cfg.holdout_fraction > 0:
        return data_lib.split_holdout(source, cfg.holdout_fraction, seed)
    return source, None


def build_state(model_dir, data=None, model=None, optim=None, train=None, mesh=None, *,
                classifier=None, method=None, monitor=None, fault=None,
                config: RunConfig | None = None) -> TrainState:
    """Everything of a run, restored from ``model_dir`` when a checkpoint exists.

    The run's configuration is ``config``, or a ``RunConfig`` of the parts given."""
    if config is None:
        config = RunConfig.of(data, model, optim, train, classifier=classifier,
                              method=method, monitor=monitor, fault=fault)
    if mesh is None:
        raise ValueError("build_state needs the mesh")
    validate(config)
    train = config.train
    if train.batch_size % mesh.size:
        raise ValueError(f"TrainConfig.batch_size {train.batch_size} is not divisible by the "
                         f"{mesh.size} devices of the mesh: use a multiple of {mesh.size}"
                         + (" (or fewer devices)" if mesh.size > train.batch_size else ""))
    if (config.model.precision == "mixed_bfloat16" and mesh.device_type() == "CPU"
            and parallel.cpu_emulates_bfloat16()):
        logging.warning("ModelConfig.precision = 'mixed_bfloat16' on a CPU without native "
                        "bfloat16: emulated, many times slower than float32 (6-12 x on a "
                        "2-core AMD EPYC); use 'float32' here")
    train_source, eval_source = _sources(config.data, config.data.split_seed(train.seed))
    try:
        steps = data_lib.steps_per_epoch(train_source.num_images, train.batch_size)
    except ValueError as err:
        raise ValueError(f"{config.data.dataset}: {err}; use TrainConfig.batch_size <= "
                         f"{train_source.num_images}") from None
    validate_against_data(config, train_source.num_images)
    os.makedirs(model_dir, exist_ok=True)
    run_info = _run_info(config, train_source)
    _check_run_info(model_dir, run_info)
    encoder, encoder_variables = _build_encoder(config, mesh)
    classifier, optimizer = _build_classifier_and_optimizer(
        config, mesh, train_source.num_images, encoder)
    global_step = layouts.replicated_variable(0, mesh, "global_step", tf.int64)
    hard_negatives = None
    if config.method.num_hard_negatives_mined:  # the method's loss reads mined negatives
        hard_negatives = HardNegativeTable(
            classifier.build_table(config.method.num_hard_negatives_mined),
            layouts.replicated_variable(-1, mesh, "hard_table_epoch", tf.int64))
    method = build_method(config.method, classifier, seed=train.seed, steps_per_epoch=steps)
    loss_scale = budget = None
    if config.model.precision == "mixed_float16":
        loss_scale = DynamicLossScale(mesh, initial_scale=config.optim.initial_loss_scale,
                                      growth_steps=config.optim.loss_scale_growth_steps)
    if train.time_budget_minutes:
        budget = TimeBudget(mesh, minutes=train.time_budget_minutes, max_epochs=train.epochs,
                            monitor_every=config.monitor.every_epochs, steps_per_epoch=steps,
                            warmup_steps=int(config.optim.warmup_epochs * steps),
                            model_dir=model_dir)
    extra = {}  # the checkpointed state of the run's other owners
    for owner in (hard_negatives, method, loss_scale, budget):
        extra.update(owner.variables() if owner is not None else {})
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
                global_step=global_step,
                hard_table=hard_negatives.table if hard_negatives else None,
                hard_table_epoch=hard_negatives.epoch if hard_negatives else None,
                loss_scale=(loss_scale.scale_var, loss_scale.good_steps) if loss_scale
                else None,
                plan=budget.plan_variables if budget else None)
            fields["step"] = int(parallel.to_numpy(global_step))
        print(f"resumed from {latest} (step {fields['step']}, {how} restore on {mesh.size} "
              "devices)", flush=True)
    return TrainState(
        model_dir=model_dir, mesh=mesh, encoder=encoder, classifier=classifier,
        optimizer=optimizer, method=method, global_step=global_step, checkpoint=checkpoint,
        manager=manager, train_source=train_source, eval_source=eval_source,
        steps_per_epoch=steps,
        epochs=(budget and budget.planned_epochs()) or train.epochs,  # a plan made earlier
        run_info=run_info, hard_negatives=hard_negatives,
        loss_scale=loss_scale, budget=budget,
    )


def _run_info(config: RunConfig, train_source) -> dict:
    """What identifies a run: a model_dir with other values is refused, and the
    evaluation tools rebuild the encoder and the split from it."""
    data, model, train = config.data, config.model, config.train
    return {
        "num_instances": train_source.num_images, "embedding_dim": model.embedding_dim,
        "backbone": model.backbone, "backbone_width": model.backbone_width,
        "use_head": model.use_head, "image_size": data.image_size,
        "train_image_size": data.train_side,
        # the stages, when they change (a run resumed with another schedule would train
        # its remaining epochs on other views)
        **({"train_size_schedule": [list(map(int, stage))
                                    for stage in data.train_size_schedule]}
           if data.train_size_schedule else {}),
        "dataset": data.dataset, "dataset_fingerprint": train_source.fingerprint(),
        "batch_size": train.batch_size, "seed": train.seed,
        "init_mode": config.classifier.init_mode,
        "num_hard_negatives": config.method.num_hard_negatives_mined,
        "head_hidden_dim": model.head_hidden_dim if model.use_head else None,
        "head_output_bn": model.head_output_bn,
        "method": config.method.method,
        # what the evaluation tools need to rebuild the same train / held-out split
        "eval_dataset": data.eval_dataset, "holdout_fraction": data.holdout_fraction,
        "holdout_seed": data.split_seed(train.seed),
    }


def _build_encoder(config: RunConfig, mesh):
    """(encoder, its replicated DVariables by Keras path), seeded by the run's seed."""
    data, model = config.data, config.model
    keras.utils.set_random_seed(config.train.seed)  # the backbone's initial weights
    # Training views of another side than evaluation's: an encoder for any side.
    input_size = data.image_size if data.trains_at_image_size else None
    encoder = models.build_encoder(
        model.backbone, input_size, embedding_dim=model.embedding_dim,
        head_hidden_dim=model.head_hidden_dim, use_head=model.use_head,
        backbone_width=model.backbone_width, precision=model.precision,
        head_output_bn=model.head_output_bn,
    )
    # the fused BN kernel where the whole batch is on one device (models/batchnorm.py)
    models.use_fused_batchnorm(encoder, model.batchnorm_kernel == "auto" and mesh.size == 1)
    return encoder, layouts.replicate_model_variables(encoder, mesh)


def _build_classifier_and_optimizer(config: RunConfig, mesh, num_instances: int, encoder):
    """W on the mesh and the optimizer of the encoder (and of W, when the method trains
    it: NPID's bank in W's place is not trained; SimCLR has no W)."""
    classifier_cfg, optim = config.classifier, config.optim
    trains_w = method_class(config.method).trains_w
    classifier = parallel.InstanceClassifier(
        num_instances, config.model.embedding_dim, mesh=mesh, layout=classifier_cfg.layout,
        temperature=config.method.temperature, chunk_size=classifier_cfg.chunk_size,
        seed=config.train.seed, unit_norm_rows=classifier_cfg.unit_norm and trains_w,
    )
    optimizer = MomentumSGD(momentum=optim.momentum, weight_decay=optim.weight_decay)
    optimizer.build([layouts.variable_handle(v) for v in encoder.trainable_variables])
    if trains_w:
        optimizer.build(classifier.distributed_variables,
                        learning_rate_scale=optim.classifier_lr_scale,
                        weight_decay=optim.classifier_weight_decay,
                        project=classifier.project_rows if classifier.unit_norm_rows else None)
    return classifier, optimizer


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
