"""Flags and set-up shared by the evaluation tools (eval_knn, eval_linear, finetune,
analyze): which model, which data, which mesh, where results go."""

from __future__ import annotations

import dataclasses
import os
import re

from absl import app, flags

FLAGS = flags.FLAGS


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TensorFlow's C++ INFO / WARNING start-up lines are not for users (errors still show);
# TF_CPP_MIN_LOG_LEVEL=0 brings them back. Set before any tool imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _gin_dir() -> str:
    """The gin configs: gin/ of a checkout, else the installed package's copy
    (tf_instcls/gin, shipped in the wheel)."""
    local = os.path.join(ROOT, "gin")
    if os.path.isdir(local):
        return local
    import importlib.util

    package = importlib.util.find_spec("tf_instcls")
    return os.path.join(os.path.dirname(package.origin), "gin")


GIN_DIR = _gin_dir()


def spread(values: list) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof 1; None for one value) of the non-missing values: the
    seed-to-seed spread of run_recipe and run_ablation."""
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def subprocess_env() -> dict:
    """Environment for a child tool process: quiet TF logs, this checkout importable."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    return env


def define_model_and_data_flags(default_out: str) -> None:
    flags.DEFINE_string("model_dir", None, "A pretraining --model_dir (its checkpoints).")
    flags.DEFINE_string("export_dir", None, "Or an export (version dir or export base).")
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or step of --model_dir "
                        "(default: the latest).")
    flags.DEFINE_string("dataset", None, "Labelled training split: digits | npz:PATH | "
                        "folder:PATH | tfds:NAME[:SPLIT] (default: the run's dataset).")
    flags.DEFINE_string("eval_dataset", None, "Labelled evaluation split (default: the "
                        "run's, else a class-stratified holdout of --dataset).")
    flags.DEFINE_float("holdout_fraction", None, "Held-out fraction when there is no "
                       "--eval_dataset (default: the run's, as pretraining held it out).")
    flags.DEFINE_integer("seed", None, "Split / subset seed (default: the run's seed).")
    flags.DEFINE_integer("virtual_devices", 0, "T virtual CPU devices for the mesh; 0 = the "
                         "real local devices (all GPUs if any, else the CPU).", lower_bound=0)
    flags.DEFINE_integer("batch_size", 256, "Images per feature-extraction step (rounded "
                         "to a multiple of the device count).", lower_bound=1)
    flags.DEFINE_string("out_dir", None, f"Results (JSON + Markdown) go here (default: "
                        f"<model_dir or export_dir>/{default_out}).")


def model_path() -> str:
    if bool(FLAGS.model_dir) == bool(FLAGS.export_dir):
        raise app.UsageError("give exactly one of --model_dir and --export_dir")
    return FLAGS.model_dir or FLAGS.export_dir


def out_dir(default_out: str) -> str:
    return FLAGS.out_dir or os.path.join(model_path(), default_out)


def make_mesh():
    """Virtual devices (if asked) must be configured before TensorFlow starts."""
    from tf_instcls import parallel

    if FLAGS.virtual_devices:
        parallel.configure_virtual_devices(FLAGS.virtual_devices)
    return parallel.build_mesh(FLAGS.virtual_devices or None,
                               device_type="CPU" if FLAGS.virtual_devices else None)


def load_models_and_splits(mesh, *, baselines: bool = False, cache_dir: str | None = None):
    """([model, + random init and raw pixels with ``baselines``], LabelledSplits) from the
    flags (``eval.runner.load_models``, bad paths as usage errors): what
    ``eval.runner.evaluate`` takes."""
    from tf_instcls.data import LabelledSplits
    from tf_instcls.eval import runner

    try:
        models = runner.load_models(model_path(), mesh, checkpoint=FLAGS.checkpoint,
                                    baselines=baselines, cache_dir=cache_dir,
                                    batch_size=FLAGS.batch_size)
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err)) from err
    train, evaluation, data = _splits(models[0])
    return models, LabelledSplits(train, evaluation, seed=data["seed"], description=data)


def load_model_and_splits(mesh):
    """(EvalModel, train source, eval source, data description) from the flags."""
    from tf_instcls.eval import common

    try:
        model = common.load_eval_model(model_path(), mesh, checkpoint=FLAGS.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err)) from err
    return (model, *_splits(model))


def _splits(model):
    """The labelled (train, eval) split the flags ask for, defaulting to the run's."""
    from tf_instcls.eval import common

    try:
        dataset, eval_dataset, fraction, seed = common.default_data_args(
            model, FLAGS.dataset, FLAGS.eval_dataset, FLAGS.holdout_fraction, FLAGS.seed)
        train, evaluation = common.labelled_splits(dataset, eval_dataset, fraction, seed)
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err)) from err
    data = {"dataset": dataset, "eval_dataset": eval_dataset or f"holdout {fraction}",
            "num_train": train.num_images, "num_eval": evaluation.num_images, "seed": seed}
    return train, evaluation, data


# -- gin, at the edge: the library never imports it ------------------------------------
def gin_config_classes() -> dict:
    """Registers the run's config dataclasses with gin (once); returns
    {RunConfig field: configurable}. The configurables (not the plain classes) read
    the gin bindings."""
    import gin
    from tf_instcls.training import config

    registered = getattr(gin_config_classes, "_done", None)
    if registered is None:
        fields = [f.name for f in dataclasses.fields(config.RunConfig)]
        registered = {field: gin.external_configurable(getattr(config, name), name=name)
                      for field, name in zip(fields, config.CONFIG_CLASSES)}
        gin_config_classes._done = registered
    return registered


def renamed_bindings(text: str) -> list[str]:
    """The renamed bindings (``training.config.RENAMED``) that ``text`` (a gin file or
    binding) uses, each as "old -> new"."""
    from tf_instcls.training.config import RENAMED

    return [f"{old} -> {new}" for old, new in RENAMED.items()
            if re.search(rf"(^|[^\w.]){re.escape(old)}\s*=", text, re.MULTILINE)]


def configs_from_gin(files, bindings=(), *, search_path: str | None = GIN_DIR):
    """Parses and finalizes gin ``files`` + ``bindings``; returns the
    ``training.config.RunConfig`` built from them. A binding renamed when the configs
    were split by owner fails with its new name."""
    import logging as std_logging

    import gin
    from tf_instcls.training.config import RunConfig

    if search_path:
        gin.add_config_file_search_path(search_path)
    configurables = gin_config_classes()
    # gin looks for an include (``include "base.gin"``) on every search path in turn and
    # logs an ERROR line for each place it is not; the include is then found on the
    # next path. Those lines are noise in a healthy run: dropped while parsing. A file
    # found nowhere still fails, with gin's own exception.
    root_logger = std_logging.getLogger()  # gin's resource_reader logs on the root logger
    probe = _GinProbeFilter()
    root_logger.addFilter(probe)
    try:
        gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=True)
    except ValueError as err:
        old = renamed_bindings("\n".join(bindings))
        for path in files:
            for candidate in (path, os.path.join(search_path or "", path)):
                if os.path.isfile(candidate):
                    with open(candidate) as f:
                        old += [f"{o} (in {path})" for o in renamed_bindings(f.read())]
                    break
        if not old:
            raise
        raise ValueError(f"{err}\nThese bindings were renamed when the configs were split by "
                         "owner (WORKSPACE.md, 'Configuration'): " + "; ".join(old)) from None
    finally:
        root_logger.removeFilter(probe)
    return RunConfig(**{field: make() for field, make in configurables.items()})


class _GinProbeFilter:
    """Drops gin's "Path not found" probe errors (see configs_from_gin)."""

    @staticmethod
    def filter(record) -> bool:
        return not (record.pathname.endswith("resource_reader.py")
                    and record.getMessage().startswith("Path not found"))


def encoder_sgd_step(encoder, variables, *, jit_compile=False):
    """tf.function of the benchmarks: forward + backward + plain SGD (lr 0.01) of an
    encoder with loss = mean squared embedding, on ``variables`` (the encoder's own, or
    their DTensor handles)."""
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            out = encoder(x, training=True)
            loss = tf.reduce_mean(tf.square(tf.cast(out["embedding"], tf.float32)))
        grads = tape.gradient(loss, variables)
        for v, g in zip(variables, grads):
            v.assign_sub(0.01 * tf.cast(g, v.dtype))
        return loss

    return step


def op_self_times(call, calls: int = 5, *, by_name: bool = False) -> dict:
    """Self time (us) per op type (or per (type, name) with ``by_name``), summed over
    ``calls`` calls of ``call`` run under TensorFlow's profiler."""
    import collections
    import glob
    import json
    import tempfile

    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    with tempfile.TemporaryDirectory(prefix="tf_instcls_profile_") as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(calls):
            call()
        tf.profiler.experimental.stop()
        files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        data, ok = plugin.xspace_to_tools_data(files, "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"the profiler's op stats could not be read from {files}")
    table = json.loads(data)[0]
    columns = [c["id"] for c in table["cols"]]
    totals = collections.Counter()
    for row in table["rows"]:
        values = dict(zip(columns, [c.get("v") for c in row["c"]]))
        key = (values["type"], values["operation"]) if by_name else values["type"]
        totals[key] += values["total_self_time"]
    return dict(totals)
