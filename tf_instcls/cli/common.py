"""Flags and set-up shared by the evaluation binaries (eval_knn, eval_linear, finetune,
analyze): which model, which data, which mesh, where results go."""

from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS


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
    flags.DEFINE_integer("seed", None, "Split / subset seed (default: the run's holdout seed).")
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
