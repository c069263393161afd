"""Checkpoint restore that survives what long runs meet.

- Corrupt or truncated latest checkpoint: every tensor of a candidate is read back on
  the host first (TF's bundle reader checks each tensor's CRC32C), so a damaged
  checkpoint is detected before anything is assigned. It is moved to
  ``checkpoints/corrupt/`` with a warning and the previous one is used.
- A different device count / process count / W layout: W, its momentum slot and the
  hard-negative table are padded to a multiple of the shard count, so their stored
  shapes change with T. Same padded shape: TF/DTensor's own restore (each device reads
  its shard). Different: every variable is read by key and re-laid out (W rows
  0..N-1 kept, new padding zero).
- Writing: a failed save (disk full, permissions) raises an error that names the
  directory and says the previous checkpoint is intact; partial files are removed.
  TF writes a checkpoint's shards to a temporary directory, merges them and only then
  updates the ``checkpoint`` state file atomically, so a kill during a save leaves
  the previous checkpoint the latest one.
"""

from __future__ import annotations

import glob
import logging as std_logging
import os
import shutil

import tensorflow as tf
from absl import logging

from tf_instcls.parallel import layouts, watchdog
from tf_instcls.parallel.mesh import PEER_ERRORS


def checkpoint_key(path: str) -> str:
    """The key under which ``tf.train.Checkpoint`` stores the variable at object
    ``path`` (e.g. ``global_step``, ``optimizer/slots/3``)."""
    return f"{path}/.ATTRIBUTES/VARIABLE_VALUE"


def encoder_key(variable_path: str) -> str:
    """The key of an encoder variable (a Keras path such as ``head_fc1/kernel``): the
    run's checkpoint stores ``encoder`` as {path: variable}, with TF's name escaping."""
    escaped = variable_path.replace(".", "..").replace("/", ".S")
    return checkpoint_key(f"encoder/{escaped}")


W_KEY = checkpoint_key("class_weights")
STEP_KEY = checkpoint_key("global_step")
# a time-budgeted run's plan: its epochs (0: not yet) and its cosine segment's start
PLAN_VARIABLES = ("planned_epochs", "plan_start_step", "plan_start_progress")
PLAN_KEY = checkpoint_key(PLAN_VARIABLES[0])


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous one is untouched."""


def verify(path: str, prefixes: tuple[str, ...] = ("",)) -> None:
    """Reads back every tensor of checkpoint ``path`` whose key starts with one of
    ``prefixes`` (default: all), CRC-checked; raises on damage."""
    reader = tf.train.load_checkpoint(path)
    for key in reader.get_variable_to_shape_map():
        if key.startswith(prefixes):
            reader.get_tensor(key)


def quarantine(path: str) -> str:
    """Moves checkpoint ``path``'s files to ``<dir>/corrupt/`` and drops it from the
    directory's ``checkpoint`` state file."""
    directory = os.path.dirname(path)
    target = os.path.join(directory, "corrupt")
    os.makedirs(target, exist_ok=True)
    for name in glob.glob(path + ".*") + glob.glob(path + "_temp*"):
        shutil.move(name, os.path.join(target, os.path.basename(name)))
    _discard(path)  # its state-file entry
    return target


def newest_valid(directory: str, *, move_damaged: bool = True,
                 prefixes: tuple[str, ...] = ("",)) -> str | None:
    """The newest checkpoint in ``directory`` that reads back intact; None when there is
    none. Damaged newer ones are skipped with a warning and, with ``move_damaged`` (one
    process only: in a multi-client run every process skips them the same way), moved
    to ``corrupt/``. ``prefixes`` limits the read-back to the keys a caller will use
    (the export reads only the encoder, not W and its momentum)."""
    state = tf.train.get_checkpoint_state(directory)
    candidates = list(state.all_model_checkpoint_paths) if state else []
    for path in reversed(candidates):  # get_checkpoint_state already joined `directory`
        try:
            verify(path, prefixes)
            return path
        except (tf.errors.OpError, ValueError, IndexError, OSError) as err:
            # a truncated data file raises IndexError ("Read less bytes than requested")
            moved = quarantine(path) if move_damaged else "(left in place)"
            logging.warning("checkpoint %s is damaged (%s: %s); moved to %s, trying the "
                            "previous one", path, type(err).__name__,
                            str(err).splitlines()[0][:200], moved)
    return None


def restore(path: str, checkpoint: tf.train.Checkpoint, *, classifier, encoder_variables,
            optimizer, global_step, hard_table=None, hard_table_epoch=None,
            loss_scale=None, plan=None) -> str:
    """Restores checkpoint ``path`` into the run's objects; returns "native" or
    "resharded" (the path taken). ``plan``: a time-budgeted run's plan variables
    (planned_epochs, plan_start_step, plan_start_progress)."""
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    if W_KEY not in shapes:
        raise ValueError(f"{path} is not a pretraining checkpoint (no class_weights)")
    if (hard_table is not None) != (checkpoint_key("hard_negatives") in shapes):
        raise ValueError(f"{path} {'lacks' if hard_table is not None else 'has'} a "
                         "hard-negative table, unlike this run's configuration")
    if (plan is not None) != (PLAN_KEY in shapes):
        raise ValueError(
            f"{path} was written by a run {'without' if plan is not None else 'with'}"
            " a time budget (TrainConfig.time_budget_minutes), unlike this configuration: "
            "resume it with the budget it had, or start a new --model_dir")
    stored_rows, dim = shapes[W_KEY]
    if dim != classifier.dim or stored_rows < classifier.num_instances:
        raise ValueError(f"{path} holds W [{stored_rows}, {dim}]; this run needs N = "
                         f"{classifier.num_instances} rows of D = {classifier.dim}")
    if stored_rows == classifier.num_padded:
        checkpoint.restore(path).assert_existing_objects_matched()
        return "native"
    n = classifier.num_instances

    def assign(variable, key):
        if key not in shapes:
            raise ValueError(f"{path} has no {key} (written by another configuration?)")
        value = reader.get_tensor(key)
        if list(value.shape) != list(variable.shape):
            raise ValueError(f"{path}: {key} has shape {list(value.shape)}, this run "
                             f"{list(variable.shape)}")
        variable.assign(layouts.pack_sharded(value.astype(variable.dtype.as_numpy_dtype),
                                             variable.layout))

    def assign_rows(variable, key):
        value = reader.get_tensor(key)
        classifier.assign_padded(variable, value[:n], variable.dtype.as_numpy_dtype, key)

    for name, variable in encoder_variables.items():
        assign(variable, encoder_key(name))
    assign(global_step, STEP_KEY)
    assign_rows(classifier.class_weights, W_KEY)
    w_slot = (optimizer.slot_for(classifier.class_weights)
              if optimizer.has_slot(classifier.class_weights) else None)  # NPID: none
    for index, slot in enumerate(optimizer.slots):
        key = checkpoint_key(f"optimizer/slots/{index}")
        if slot is w_slot:
            assign_rows(slot, key)
        else:
            assign(slot, key)
    if hard_table is not None:
        assign_rows(hard_table, checkpoint_key("hard_negatives"))
        assign(hard_table_epoch, checkpoint_key("hard_negatives_epoch"))
    if loss_scale is not None:  # mixed_float16's dynamic loss scale
        assign(loss_scale[0], checkpoint_key("loss_scale"))
        assign(loss_scale[1], checkpoint_key("loss_scale_good_steps"))
    if plan is not None:
        for variable, name in zip(plan, PLAN_VARIABLES):
            assign(variable, checkpoint_key(name))
    return "resharded"


def _discard(prefix: str) -> None:
    for name in glob.glob(prefix + ".*") + glob.glob(prefix + "_temp*"):
        try:
            shutil.rmtree(name) if os.path.isdir(name) else os.remove(name)
        except OSError:
            pass  # another process of the run removed it first
    directory = os.path.dirname(prefix)
    try:
        state = tf.train.get_checkpoint_state(directory)
        if state is None:
            return
        remaining = [p for p in state.all_model_checkpoint_paths
                     if os.path.basename(p) != os.path.basename(prefix)]
        if len(remaining) != len(state.all_model_checkpoint_paths):
            if remaining:
                tf.compat.v1.train.update_checkpoint_state(directory, remaining[-1], remaining)
            else:
                os.remove(os.path.join(directory, "checkpoint"))
    except (tf.errors.OpError, OSError) as err:
        logging.warning("could not drop %s from the checkpoint state: %s", prefix, err)


class _SaverRetraceFilter:
    """TensorFlow's checkpoint writer defines its tf.function inside ``save`` (a new one
    per call), so every save after the fifth logs "5 out of the last 5 calls to
    MultiDeviceSaver.save.<locals>.tf_function_save triggered tf.function retracing".
    Nothing here can trace it once; the warning is dropped (any other retracing warning
    still shows)."""

    @staticmethod
    def filter(record) -> bool:
        return "MultiDeviceSaver.save.<locals>.tf_function_save" not in record.getMessage()


std_logging.getLogger("tensorflow").addFilter(_SaverRetraceFilter)


def save(manager: tf.train.CheckpointManager, step: int) -> str:
    """``manager.save`` with a clear error instead of a corrupt checkpoint."""
    watchdog.beat()
    previous = manager.latest_checkpoint
    try:
        path = manager.save(checkpoint_number=step)
        watchdog.beat()
        return path
    except (tf.errors.OpError, OSError) as err:
        # The state file may already name this checkpoint (TF records it from a
        # completion callback): drop its files and its entry together.
        prefix = os.path.join(manager.directory, f"ckpt-{step}")
        _discard(prefix)
        if isinstance(err, PEER_ERRORS):
            raise  # a lost peer, not a storage problem: the loop reports it
        message = getattr(err, "message", None) or str(err)
        raise CheckpointWriteError(
            f"could not write checkpoint {prefix} ({type(err).__name__}: "
            f"{message.splitlines()[0][:300]}); is the disk full or read-only? "
            + (f"The previous checkpoint {previous} is intact and a rerun resumes from it."
               if previous else "No earlier checkpoint exists.")) from err
