"""The encoder of a pretraining run, rebuilt from its model_dir on plain variables.

Checkpoints hold the encoder under ``encoder/<variable path>`` (see ``training/loop.py``),
next to W, the optimizer and the hard-negative table. Reading it back needs neither a
mesh nor the classifier: the backbone and head are rebuilt from ``run_info.json`` and
each variable is read by key from the checkpoint (any device count, any layout), so
the result is an ordinary single-device Keras model.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from tf_instcls import defaults, models
from tf_instcls.training import checkpoints

# An export's files beside its SavedModel (written by export/saved_model.py, read here).
KERAS_FILE = os.path.join("assets.extra", "encoder.keras")
INFO_FILE = os.path.join("assets.extra", "export_info.json")


@dataclasses.dataclass
class RestoredEncoder:
    encoder: keras.Model  # images (normalised float) -> {"features", "embedding"}
    run_info: dict
    step: int
    checkpoint_path: str

    @property
    def image_size(self) -> int:
        return int(self.run_info["image_size"])


def read_run_info(model_dir: str) -> dict:
    path = os.path.join(model_dir, "run_info.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{model_dir} is not a pretraining model_dir: {path} is missing "
            "(tools/train.py writes it at the start of a run)"
        )
    with open(path) as f:
        return json.load(f)


def find_checkpoint(model_dir: str, checkpoint: str | None = None) -> str:
    """``checkpoint`` (a prefix like .../ckpt-310, or a step number) or the latest one."""
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    if checkpoint is None:
        # skips damaged or missing checkpoints (leaving them where they are); only what
        # the encoder needs is read back, not W and its momentum
        latest = checkpoints.newest_valid(ckpt_dir, move_damaged=False,
                                          prefixes=("encoder/", checkpoints.STEP_KEY))
        if latest is None:
            raise FileNotFoundError(f"no readable checkpoint in {ckpt_dir} (has the run "
                                    "saved one?)")
        return latest
    if checkpoint.isdigit():
        checkpoint = os.path.join(ckpt_dir, f"ckpt-{checkpoint}")
    if not tf.io.gfile.exists(checkpoint + ".index"):
        available = sorted(p[: -len(".index")] for p in tf.io.gfile.glob(
            os.path.join(ckpt_dir, "ckpt-*.index")))
        raise FileNotFoundError(f"checkpoint {checkpoint} not found; available: {available}")
    return checkpoint


def head_hidden_dim(run_info: dict, first_head_kernel_shape=None) -> int:
    """The MLP head's hidden width: the run's record, else (older runs) the width of
    the first head layer's kernel [in, hidden], else the default (defaults.HEAD_HIDDEN_DIM)."""
    if run_info.get("head_hidden_dim"):
        return int(run_info["head_hidden_dim"])
    if first_head_kernel_shape is not None:
        return int(first_head_kernel_shape[1])
    return defaults.HEAD_HIDDEN_DIM


def build_run_encoder(run_info: dict, head_hidden_dim: int) -> keras.Model:
    """A freshly initialised encoder with the architecture ``run_info`` records."""
    return models.build_encoder(
        run_info["backbone"], int(run_info["image_size"]),
        embedding_dim=int(run_info["embedding_dim"]), head_hidden_dim=head_hidden_dim,
        use_head=bool(run_info["use_head"]), backbone_width=run_info.get("backbone_width"),
        head_output_bn=bool(run_info.get("head_output_bn", False)),
    )


def restore_encoder(model_dir: str, checkpoint: str | None = None) -> RestoredEncoder:
    """Builds the run's encoder and loads its weights (BN statistics included)."""
    run_info = read_run_info(model_dir)
    path = find_checkpoint(model_dir, checkpoint)
    shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    hidden = head_hidden_dim(run_info, shapes.get(checkpoints.encoder_key("head_fc1/kernel")))
    encoder = build_run_encoder(run_info, hidden)
    for variable, value in read_encoder_weights(path, encoder):
        variable.assign(value)
    return RestoredEncoder(encoder=encoder, run_info=run_info, step=checkpoint_step(path),
                           checkpoint_path=path)


def checkpoint_step(path: str) -> int:
    reader = tf.train.load_checkpoint(path)
    return int(reader.get_tensor(checkpoints.STEP_KEY))


def read_encoder_weights(path: str, encoder: keras.Model) -> list:
    """[(Keras variable, numpy value)] of ``encoder`` from the checkpoint at ``path``;
    a missing variable or a shape mismatch is an error naming it."""
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    values, missing = [], []
    for variable in encoder.variables:
        key = checkpoints.encoder_key(variable.path)
        if key not in shapes:
            missing.append(variable.path)
            continue
        if list(shapes[key]) != list(variable.shape):
            raise ValueError(
                f"{path}: encoder variable {variable.path} has shape {shapes[key]} in the "
                f"checkpoint but {list(variable.shape)} in the model built from run_info.json"
            )
        values.append((variable, np.asarray(reader.get_tensor(key))))
    if missing:
        raise ValueError(f"{path} does not match the encoder built from run_info.json: "
                         f"{len(missing)} variables missing, e.g. {missing[:3]}")
    return values


def read_class_weights(path: str, num_instances: int | None = None) -> np.ndarray:
    """W [N, D] of a checkpoint (padding rows dropped when ``num_instances`` is given)."""
    reader = tf.train.load_checkpoint(path)
    w = reader.get_tensor(checkpoints.W_KEY)
    return w[:num_instances] if num_instances else w


def load_encoder(path: str, checkpoint: str | None = None) -> RestoredEncoder:
    """A pretraining model_dir (its latest or given checkpoint) or an export (a version
    dir or its base: the Keras encoder written beside the SavedModel)."""
    if os.path.exists(os.path.join(path, "run_info.json")):
        return restore_encoder(path, checkpoint)
    try:
        export_dir = resolve_export_dir(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is neither a pretraining model_dir (no run_info.json) nor an export "
            "(no saved_model.pb or version directories)") from None
    if checkpoint is not None:
        raise ValueError("--checkpoint applies to a model_dir, not to an export")
    info = load_export_info(export_dir)
    encoder = keras.saving.load_model(os.path.join(export_dir, KERAS_FILE))
    run_info = dict(info.get("run_info") or {}, image_size=info["image_size"])
    return RestoredEncoder(encoder=encoder, run_info=run_info, step=int(info.get("step", 0)),
                           checkpoint_path=export_dir)


def load_export_info(export_dir: str) -> dict:
    path = os.path.join(export_dir, INFO_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{export_dir} is not a tf_instcls export ({path} missing)")
    with open(path) as f:
        return json.load(f)


def latest_version(export_base: str) -> str:
    """``export_base/<largest integer version>`` (what TF Serving would serve)."""
    versions = [d for d in os.listdir(export_base) if d.isdigit()] if os.path.isdir(
        export_base) else []
    if not versions:
        raise FileNotFoundError(f"no exported version under {export_base}")
    return os.path.join(export_base, max(versions, key=int))


def resolve_export_dir(path: str) -> str:
    """A version dir, or an export base (its latest version)."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    return latest_version(path)
