"""What every evaluation tool shares: the model (a run's checkpoint or an export) on the
mesh, the labelled train / evaluation split, cached features, JSON + Markdown output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import numpy as np
from absl import logging

from tf_instcls import data as data_lib
from tf_instcls import defaults
from tf_instcls.eval.restore import (
    RestoredEncoder,
    build_run_encoder,
    head_hidden_dim,
    load_encoder,
)
from tf_instcls.parallel import layouts
from tf_instcls.parallel.features import extract_features

# The two representations of an encoder: the backbone's pooled features, the head's
# output.
FEATURE_KINDS = ("features", "embedding")


@dataclasses.dataclass
class EvalModel:
    """An encoder on the mesh (replicated DVariables): the ``model`` of the evaluators.

    ``features(source)`` computes (eval view, BN in inference mode) or reads from
    ``cache_dir`` the features of a source, and keeps them in memory for the next
    evaluator, until another checkpoint is assigned.
    """

    restored: RestoredEncoder
    mesh: object
    name: str
    cache_dir: str | None = None
    batch_size: int = 256
    progress: bool = True
    _memory: dict = dataclasses.field(default_factory=dict, repr=False)

    def features(self, source) -> dict:
        key = (self.restored.checkpoint_path, self.restored.step, source.fingerprint())
        if key not in self._memory:
            self._memory[key] = compute_features(self, source, batch_size=self.batch_size,
                                                 cache_dir=self.cache_dir,
                                                 progress=self.progress)
        return self._memory[key]

    def class_weights(self, num_instances: int) -> np.ndarray:
        """W [N, D] of the model's checkpoint (a pretraining run's, not an export)."""
        from tf_instcls.eval.restore import read_class_weights

        return read_class_weights(self.restored.checkpoint_path, num_instances)

    @property
    def encoder(self):
        return self.restored.encoder

    @property
    def image_size(self) -> int:
        return self.restored.image_size

    def describe(self) -> dict:
        info = self.restored.run_info
        return {"model": self.name, "checkpoint": self.restored.checkpoint_path,
                "step": self.restored.step, "backbone": info.get("backbone"),
                "backbone_width": info.get("backbone_width"),
                "pretrain_dataset": info.get("dataset"), "mesh_devices": self.mesh.size}


def load_eval_model(path: str, mesh, *, checkpoint: str | None = None,
                    random_init: bool = False) -> EvalModel:
    """The model at ``path`` (model_dir or export) on ``mesh``.

    ``random_init=True`` keeps the architecture but re-initialises every weight with
    the run's seed: the "same network at random initialisation" baseline.
    """
    restored = load_encoder(path, checkpoint)
    name = os.path.basename(os.path.normpath(path))
    if random_init:
        import keras

        keras.utils.set_random_seed(int(restored.run_info.get("seed", 0)))
        kernel = next((v.shape for v in restored.encoder.variables
                       if v.path == "head_fc1/kernel"), None)
        fresh = build_run_encoder(restored.run_info, head_hidden_dim(restored.run_info, kernel))
        restored = dataclasses.replace(restored, step=0, encoder=fresh,
                                       checkpoint_path="random_init")
        name += " (random init)"
    layouts.replicate_model_variables(restored.encoder, mesh)
    return EvalModel(restored=restored, mesh=mesh, name=name)


def assign_checkpoint(model: EvalModel, checkpoint_path: str) -> None:
    """Loads another checkpoint of the same run into ``model`` (already on the mesh), so
    a sweep over checkpoints reuses one compiled feature function."""
    from tf_instcls.eval.restore import checkpoint_step, read_encoder_weights

    for variable, value in read_encoder_weights(checkpoint_path, model.encoder):
        handle = layouts.variable_handle(variable)
        handle.assign(layouts.pack_sharded(value.astype(handle.dtype.as_numpy_dtype),
                                           handle.layout))
    model.restored = dataclasses.replace(model.restored, checkpoint_path=checkpoint_path,
                                         step=checkpoint_step(checkpoint_path))
    model._memory.clear()


@dataclasses.dataclass
class RawPixels:
    """The "raw pixels" baseline as an evaluator's model: the eval view flattened."""

    image_size: int
    name: str = "raw pixels"
    encoder = None
    mesh = None

    def features(self, source) -> dict:
        return {"pixels": raw_pixels(source, self.image_size)}

    def describe(self) -> dict:
        return {"model": self.name}


def labelled_splits(dataset: str, eval_dataset: str | None, holdout_fraction: float,
                    seed: int):
    """(train, evaluation) sources, both labelled.

    Without ``eval_dataset`` a class-stratified ``holdout_fraction`` of ``dataset`` is
    held out exactly as pretraining held it out (same seed), so the evaluation images
    were never seen in pretraining either.
    """
    train = data_lib.load_source(dataset)
    if train.labels is None:
        raise ValueError(f"{dataset} has no labels: evaluation needs labelled data "
                         "(npz with y, folder with class subfolders, or a TFDS split)")
    if eval_dataset:
        evaluation = data_lib.load_source(eval_dataset)
        if evaluation.labels is None:
            raise ValueError(f"{eval_dataset} has no labels")
        return train, evaluation
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"need --eval_dataset or 0 < holdout_fraction < 1; "
                         f"got {holdout_fraction}")
    return data_lib.split_holdout(train, holdout_fraction, seed)


def default_data_args(model: EvalModel, dataset, eval_dataset, holdout_fraction, seed):
    """Fills unset data flags from the run (its dataset, eval split and seed)."""
    info = model.restored.run_info
    dataset = dataset or info.get("dataset")
    if not dataset:
        raise ValueError("--dataset is required (the model does not record its dataset)")
    if eval_dataset is None and dataset == info.get("dataset"):
        eval_dataset = info.get("eval_dataset")
    if holdout_fraction is None:
        holdout_fraction = info.get("holdout_fraction") or defaults.HOLDOUT_FRACTION
    if seed is None:  # the run's holdout draw (older runs: their training seed)
        seed = int(info.get("holdout_seed", info.get("seed", 0)))
    return dataset, eval_dataset, float(holdout_fraction), seed


def compute_features(model: EvalModel, source, *, batch_size: int = 256,
                     cache_dir: str | None = None, progress: bool = True) -> dict:
    """``{"features", "embedding"}`` of ``source`` (eval view, BN in inference mode), on
    the mesh; cached in ``cache_dir`` keyed by checkpoint, data fingerprint and size."""
    path = None
    if cache_dir:
        key = hashlib.sha256(
            f"{model.restored.checkpoint_path}|{model.restored.step}|{source.fingerprint()}|"
            f"{model.image_size}".encode()).hexdigest()[:16]
        path = os.path.join(cache_dir, f"features-{key}.npz")
        if os.path.exists(path):
            with np.load(path) as cached:
                logging.info("features of %s from cache %s", source.name, path)
                return {k: cached[k] for k in FEATURE_KINDS}
    start = time.perf_counter()
    out = extract_features(model.encoder, source, model.image_size, model.mesh,
                           batch_size=batch_size, progress=progress)
    logging.info("features of %d images of %s in %.1f s", source.num_images, source.name,
                 time.perf_counter() - start)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **out)
        os.replace(tmp, path)
    return out


def raw_pixels(source, image_size: int) -> np.ndarray:
    """The "raw pixels" baseline's features: the eval view flattened [n, S*S*3]."""
    import tensorflow as tf

    dataset = data_lib.make_eval_dataset(source, image_size, batch_size=256)
    rows = [tf.reshape(batch["images"], [len(batch["images"]), -1]).numpy()
            for batch in dataset]
    return np.concatenate(rows)[: source.num_images]


def write_results(out_dir: str, name: str, record: dict, markdown: str) -> tuple[str, str]:
    """``out_dir/name.json`` and ``out_dir/name.md`` (both written atomically)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext, text in (("json", json.dumps(record, indent=1, default=_jsonable)),
                      ("md", markdown)):
        path = os.path.join(out_dir, f"{name}.{ext}")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        paths.append(path)
    return tuple(paths)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
