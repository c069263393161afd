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
from tf_instcls import models, parallel
from tf_instcls.methods import Method, build_method, method_class
from tf_instcls.parallel import layouts, watchdog
from tf_instcls.training import checkpoints, stages
from tf_instcls.training.budget import TimeBudget
from tf_instcls.training.config import (  # noqa: F401 (the run's configs, re-exported)
    CONFIG_CLASSES,
    ClassifierConfig,
    DataConfig,
    FaultConfig,
    FullConfig,
    MethodConfig,
    ModelConfig,
    MonitorConfig,
    NPIDConfig,
    OptimConfig,
    RunConfig,
    SampledConfig,
    SimCLRConfig,
    TrainConfig,
    validate,
    validate_against_data,
)
from tf_instcls.training.loss_scale import DynamicLossScale
from tf_instcls.training.optimizer import MomentumSGD
from tf_instcls.training.schedules import scaled_learning_rate, warmup_cosine
from tf_instcls.training.step import make_train_step


class WorkerLostError(RuntimeError):
    """Another process of a multi-client run died or became unreachable."""


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


def _sources(cfg: DataConfig, seed: int):
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
    train_source, eval_source = _sources(config.data, train.seed)
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


def _non_finite(state, fault, epoch, batch_index, logs, skips) -> int:
    """The non-finite guard's decision; the step already left every variable as it was."""
    where = (f"step {state.last_step} (epoch {epoch}, batch {batch_index}): loss "
             f"{logs.get('loss')}")
    if fault.nonfinite == "skip" and skips + 1 < fault.max_consecutive_skips:
        logging.warning("non-finite loss or gradient at %s; step skipped (W, backbone, "
                        "momentum and BN statistics unchanged)", where)
        return skips + 1
    reason = ("" if fault.nonfinite == "stop" else
              f" after {fault.max_consecutive_skips} consecutive skipped steps")
    raise FloatingPointError(
        f"non-finite loss or gradient at {where}{reason}. Nothing non-finite reached W or "
        f"the checkpoints; the latest checkpoint is {state.manager.latest_checkpoint}. "
        "Lower the learning rate, check the data, or set FaultConfig.nonfinite = 'skip'.")


def run(model_dir: str, config: RunConfig, mesh, *, make_callbacks, callbacks=()) -> dict:
    """Builds the run's state, then its epoch loop; returns the last epoch's logs.

    ``make_callbacks(state) -> list`` gives the run's own callbacks once the state
    exists (``pretrain.run_pretraining`` passes ``callbacks.default_callbacks``: the loop
    does not import the layers above it); ``callbacks`` (the user's) run after them.
    A watchdog (``FaultConfig.step_timeout_s``) ends the process if progress stops; in
    a multi-client run a lost peer raises :class:`WorkerLostError`.
    """
    started = time.perf_counter()  # a time budget counts from here
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    with stages.timed(model_dir, "startup", devices=mesh.size) as fields:
        state = build_state(model_dir, config=config, mesh=mesh)
        fields.update(num_instances=state.train_source.num_images, step=state.step)
    timeout = config.fault.step_timeout_s
    if not timeout:
        return _train(state, config, [*make_callbacks(state), *callbacks], started)
    describe = lambda: (f"Last step {state.last_step}; latest checkpoint "  # noqa: E731
                        f"{state.manager.latest_checkpoint}.")
    with watchdog.Watchdog(timeout, describe):
        try:
            return _train(state, config, [*make_callbacks(state), *callbacks], started)
        except parallel.PEER_ERRORS as err:
            if not parallel.is_multi_client():
                raise
            raise WorkerLostError(
                f"process {parallel.process_index()} of {parallel.process_count()} lost "
                f"contact with another process of this run after step {state.last_step} "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). The latest "
                f"complete checkpoint is {state.manager.latest_checkpoint}; restart every "
                "process with the same --model_dir to resume from it.") from err


def _train(state, config: RunConfig, callbacks, started: float) -> dict:
    """The epoch loop of :func:`run` (``started``: the run's start, for a time budget)."""
    train, fault = config.train, config.fault
    peak_lr = scaled_learning_rate(config.optim.base_learning_rate,
                                   config.optim.base_batch_size, train.batch_size)
    total_steps = state.epochs * state.steps_per_epoch
    warmup_steps = int(config.optim.warmup_epochs * state.steps_per_epoch)
    lr_fn = lambda step: warmup_cosine(  # noqa: E731
        step, peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps)
    if state.budget is not None:  # the plan's variables, read in the step
        lr_fn = state.budget.learning_rate_fn(peak_lr)
    step_fn = make_train_step(
        state.encoder, state.classifier, state.optimizer, lr_fn, state.method,
        hard_table=state.hard_negatives.table if state.hard_negatives else None,
        loss_scale=state.loss_scale)
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=False, add_progbar=False, model=state.encoder)
    start = state.last_step = state.step
    logs: dict = {}
    stop_at = train.max_steps or total_steps
    if start >= stop_at and start < total_steps:
        print(f"nothing to do: the run in {state.model_dir} is at step {start}, at its "
              f"max_steps {train.max_steps} (of {total_steps}); raise --max_steps or set "
              "it to 0 to go on", flush=True)
        return {"stopped_at_step": start}
    callback_list.on_train_begin({"step": start})
    if state.budget is not None:
        state.budget.start(started, state.epoch_results.get("knn_seconds"))
    batches, shapes = _batches(state, config, start), set()
    epoch, plan_ended_run = start // state.steps_per_epoch - 1, False
    while epoch + 1 < state.epochs:
        epoch += 1
        if state.budget is not None and state.budget.ready(epoch):
            planned = state.budget.plan(epoch, state.step)
            if planned is not None:
                state.epochs = planned
                total_steps = planned * state.steps_per_epoch
                stop_at = train.max_steps or total_steps
            if epoch >= state.epochs:  # the budget is spent: no epoch more fits
                plan_ended_run = True
                break
        if state.budget is not None:
            state.budget.start_epoch()
        state.epoch_results.clear()  # callbacks add results for this epoch here (in place:
        # they hold this dict)
        epoch_start = time.perf_counter()
        first = state.step - epoch * state.steps_per_epoch
        callback_list.on_epoch_begin(epoch)
        last = min(state.steps_per_epoch, stop_at - epoch * state.steps_per_epoch)
        logs, epoch_logs, count = _run_steps(state, step_fn, batches, callback_list, fault,
                                             epoch, first, last, train.batch_size, shapes)
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
        if state.budget is not None:
            state.budget.end_epoch(full=first == 0 and count == state.steps_per_epoch,
                                   monitor_s=state.epoch_results.get("knn_seconds", 0.0))
        if state.step >= stop_at and state.step < total_steps:  # max_steps at an epoch end
            return _stop_at_max_steps(callback_list, state, total_steps, logs)
    # A plan that ends the run changed the plan's variables after the last save: the
    # checkpoint saver writes this step again (plan_ended_run).
    callback_list.on_train_end({**logs, "plan_ended_run": True} if plan_ended_run else logs)
    return logs


def _batches(state, config: RunConfig, start: int):
    """The training batches from global step ``start`` on: one pipeline for every
    remaining epoch, built once, prefetching across epochs."""
    data, train = config.data, config.train
    start_epoch = start // state.steps_per_epoch
    if start_epoch >= train.epochs:
        return iter(())
    # [(first_epoch, end_epoch, augmentation)]: one stage unless the views' side changes
    stages_ = [(first, end, data.augment_config(side))
               for first, end, side in data.train_stages(train.epochs)]
    return iter(data_lib.make_staged_train_dataset(
        state.train_source, stages_, global_batch_size=train.batch_size, epoch=start_epoch,
        start_step=start - start_epoch * state.steps_per_epoch, seed=train.seed,
        process_index=parallel.process_index(), process_count=parallel.process_count(),
        last_epoch=train.epochs, views=data.views,
    ))


def _run_steps(state, step_fn, batches, callback_list, fault, epoch: int, first: int,
               last: int, batch_size: int, shapes: set):
    """Steps ``first .. last - 1`` of ``epoch``. Returns (the last step's logs, the
    epoch's mean loss and instance accuracy over its finite steps (empty if none), how
    many steps were finite). Each process' step times go to stages.jsonl, but for the
    first step on each images shape (``shapes``: those seen so far), which traces."""
    image_layout = layouts.batch_layout(state.mesh, 5)
    id_layout = layouts.batch_layout(state.mesh, 1)
    sums = {"loss": 0.0, "instance_acc": 0.0}
    logs, count, skips, seconds = {}, 0, 0, []
    tick = time.perf_counter()
    for batch_index in range(first, last):
        batch = next(batches)
        traced = batch["images"].shape in shapes  # a new side (a stage of progressive
        shapes.add(batch["images"].shape)  # resizing) retraces
        callback_list.on_train_batch_begin(batch_index)
        metrics = step_fn(layouts.pack_local_batch(batch["images"], image_layout),
                          layouts.pack_local_batch(batch["ids"], id_layout), state.global_step)
        finite = bool(parallel.to_numpy(metrics.pop("finite")))
        state.last_step += 1
        watchdog.beat()
        logs = {k: float(parallel.to_numpy(v)) for k, v in metrics.items()}
        if not finite:
            skips = _non_finite(state, fault, epoch, batch_index, logs, skips)
            if fault.nonfinite == "skip":
                continue
        else:
            skips = 0
        now = time.perf_counter()
        logs["images_per_sec"] = batch_size / max(now - tick, 1e-9)
        if traced:
            seconds.append(now - tick)
        tick = now
        for key in sums:
            sums[key] += logs[key]
        count += 1
        callback_list.on_train_batch_end(batch_index, logs)
    _record_steps(state.model_dir, seconds, epoch=epoch, step=state.step)
    return logs, ({k: v / count for k, v in sums.items()} if count else {}), count


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
