"""The epoch loop, read top to bottom (the entry point is ``pretrain.run_pretraining``).

``run`` takes the model_dir's lock, builds the run's state (``training/state.py``:
restored from the latest checkpoint, if any) and drives ``keras.callbacks.CallbackList``
over the epochs, so ours and the user's callbacks run on the usual hooks. A signal, a
max_steps, a time budget's plan or the last epoch ends it.
"""

from __future__ import annotations

import time

import keras
import tensorflow as tf
from absl import logging

from tf_instcls import data as data_lib
from tf_instcls import parallel
from tf_instcls.parallel import layouts, preemption, watchdog
from tf_instcls.training import stages
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
)
from tf_instcls.training.run_lock import RunLock, RunLockedError
from tf_instcls.training.schedules import scaled_learning_rate, warmup_cosine
from tf_instcls.training.state import (  # noqa: F401 (re-exported: the run's state)
    HardNegativeTable,
    TrainState,
    build_state,
    validate_configs,
)
from tf_instcls.training.step import make_train_step


class WorkerLostError(RuntimeError):
    """Another process of a multi-client run died or became unreachable."""


def run(model_dir: str, config: RunConfig, mesh, *, make_callbacks, callbacks=()) -> dict:
    """Builds the run's state, then its epoch loop; returns the last epoch's logs.

    ``make_callbacks(state) -> list`` gives the run's own callbacks once the state
    exists (``pretrain.run_pretraining`` passes ``callbacks.default_callbacks``: the loop
    does not import the layers above it); ``callbacks`` (the user's) run after them.

    The run holds ``model_dir/run.lock`` (``training.run_lock``: a second run on the
    same model_dir fails at once). SIGTERM and SIGINT stop it cleanly
    (``parallel.preemption``): the logs then hold ``stopped_by``, ``stopped_at_step`` and
    the process's ``exit_code``. A watchdog (``FaultConfig.step_timeout_s``) ends the
    process if progress stops; in a multi-client run a lost peer raises
    :class:`WorkerLostError`.
    """
    started = time.perf_counter()  # a time budget counts from here
    validate(config)  # before the lock writes into model_dir
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    with preemption.handle_signals(config.fault.grace_period_s):
        lock = _lock(model_dir, mesh)
        try:
            with stages.timed(model_dir, "startup", devices=mesh.size) as fields:
                state = build_state(model_dir, config=config, mesh=mesh)
                fields.update(num_instances=state.train_source.num_images, step=state.step)
        except BaseException:
            if lock is not None:  # a refused run leaves the model_dir as it found it
                lock.release(remove=True)
            raise
        try:
            return _watched(state, config, [*make_callbacks(state), *callbacks], started)
        finally:
            if lock is not None:
                lock.release()


def _lock(model_dir: str, mesh) -> RunLock | None:
    """Process 0 takes the run's lock and every process learns whether it could (a
    collective in a multi-client run); the others hold none."""
    lock, failure = None, None
    if parallel.process_index() == 0:
        lock = RunLock(model_dir)
        try:
            lock.acquire()
        except RunLockedError as err:
            lock, failure = None, err
    if parallel.process_count() > 1:
        refused = layouts.max_over_processes([float(failure is not None)], mesh)[0] > 0
        if refused and failure is None:
            raise RunLockedError(f"{model_dir} is in use by another training run (process "
                                 "0 of this run names it)")
    if failure is not None:
        raise failure
    return lock


def _watched(state, config: RunConfig, callbacks: list, started: float) -> dict:
    """:func:`_train` under the progress watchdog, a lost peer named."""
    timeout = config.fault.step_timeout_s
    if not timeout:
        return _train(state, config, callbacks, started)
    describe = lambda: (f"Last step {state.last_step}; latest checkpoint "  # noqa: E731
                        f"{state.manager.latest_checkpoint}.")
    with watchdog.Watchdog(timeout, describe):
        try:
            return _train(state, config, callbacks, started)
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
    try:
        if preemption.should_stop(state.mesh):  # a signal during the start-up
            raise preemption.StopRequested
        callback_list.on_train_begin({"step": start})
    except preemption.StopRequested:  # (the prior is not in W yet: nothing to save)
        return _stop(state, callback_list, save=False)
    if state.budget is not None:
        state.budget.start(started, state.epoch_results.get("knn_seconds"))
    batches, shapes = _batches(state, config, start), set()
    epoch, plan_ended_run = start // state.steps_per_epoch - 1, False
    while epoch + 1 < state.epochs:
        epoch += 1
        if preemption.should_stop(state.mesh):  # a signal at the last epoch's end
            return _stop(state, callback_list, save=True)
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
        try:
            callback_list.on_epoch_begin(epoch)
        except preemption.StopRequested:  # mining gave up; the table is the epoch's before
            return _stop(state, callback_list, save=True)
        last = min(state.steps_per_epoch, stop_at - epoch * state.steps_per_epoch)
        logs, epoch_logs, count, stopped = _run_steps(
            state, step_fn, batches, callback_list, fault, epoch, first, last,
            train.batch_size, shapes)
        if stopped:  # a signal: the steps so far are checkpointed, mid-epoch
            return _stop(state, callback_list, save=True)
        if last < state.steps_per_epoch:  # max_steps reached inside this epoch
            return _stop_at_max_steps(callback_list, state, total_steps, epoch_logs)
        epoch_logs = _epoch_record(state, epoch, logs, epoch_logs,
                                   skipped=state.steps_per_epoch - first - count,
                                   seconds=time.perf_counter() - epoch_start)
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


def _epoch_record(state, epoch: int, logs: dict, means: dict, *, skipped: int,
                  seconds: float) -> dict:
    """The epoch's record: the means over its finite steps, the last step's lr (and loss
    scale), the time, the callbacks' results (mining's time and share of the epoch)."""
    record = dict(means)
    if skipped:
        record["skipped_steps"] = skipped
        if not means:
            logging.warning("epoch %d: every step was skipped (non-finite loss or gradient); "
                            "no loss or instance accuracy is recorded for it", epoch + 1)
    if "loss_scale" in logs:  # mixed_float16: the dynamic loss scale at the epoch's end
        record["loss_scale"] = logs["loss_scale"]
    record.update(epoch=epoch, lr=logs.get("lr", 0.0), step=state.step,
                  train_seconds=seconds, **state.epoch_results)  # e.g. mining_seconds
    if "mining_seconds" in state.epoch_results:  # mining's share of the epoch's time
        record["mining_share"] = (state.epoch_results["mining_seconds"]
                                  / max(seconds, 1e-9))
    return record


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
    """Steps ``first .. last - 1`` of ``epoch``, or fewer if a stop is requested (then
    every process ends after the same step). Returns (the last step's logs, the epoch's
    mean loss and instance accuracy over its finite steps (empty if none), how many steps
    were finite, whether it stopped early). Each process' step times go to
    stages.jsonl, but for the first step on each images shape (``shapes``: those seen so
    far), which traces."""
    image_layout = layouts.batch_layout(state.mesh, 5)
    id_layout = layouts.batch_layout(state.mesh, 1)
    sums = {"loss": 0.0, "instance_acc": 0.0}
    logs, count, skips, seconds, stopped = {}, 0, 0, [], False
    tick = time.perf_counter()
    for batch_index in range(first, last):
        if preemption.should_stop(state.mesh):  # agreed over processes: one step for all
            stopped = True
            break
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
    means = {k: v / count for k, v in sums.items()} if count else {}
    return logs, means, count, stopped


def _stop(state, callback_list, *, save: bool) -> dict:
    """Ends a run on a signal (``parallel.preemption``): with ``save``, the checkpoint
    saver writes the current step (unless it is saved already; never step 0, before the
    prior is in W), then one line says where it stopped and how to resume."""
    signum = preemption.agreed_signal()
    name = preemption.signal_name(signum)
    if save and state.step > 0:
        callback_list.on_train_end({"stopped_by": name, "stopped_at_step": state.step})
    latest = state.manager.latest_checkpoint
    print(f"stopped by {name} at step {state.step}; the latest checkpoint is "
          f"{latest or 'none (nothing trained yet)'}. Run the same command again to resume "
          f"(exit code {preemption.exit_code(signum)})", flush=True)
    return {"stopped_by": name, "stopped_at_step": state.step,
            "exit_code": preemption.exit_code(signum)}


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
