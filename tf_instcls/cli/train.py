r"""Pretrains an encoder by full instance classification (absl + gin).

With no flags it runs the embedded demo (gin/digits.gin: scikit-learn's digits, a small
ConvNet, a few minutes on 2 CPU cores) and ends by printing the kNN top-1 accuracy:

  python tools/train.py
  python tools/train.py --gin_file=gin/cifar10_subset_npz.gin --dataset=npz:PATH \
      --model_dir=runs/cifar_subset

Rerunning with the same --model_dir resumes from its latest checkpoint. One run at a time
holds a model_dir. SIGTERM or SIGINT (Ctrl-C) saves the step in flight and exits with
code 143 / 130 (128 + the signal); a crash exits with 1, the progress watchdog with 75.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from tf_instcls.cli import gin_config

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [os.path.join(gin_config.GIN_DIR, "digits.gin")],
                          "gin config files, applied in order (default: the digits demo).")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings, e.g. \"TrainConfig.epochs = 5\".")
flags.DEFINE_string("model_dir", None, "Checkpoints, metrics.jsonl, TensorBoard, gin config "
                    "(default: runs/<gin file name>).")
flags.DEFINE_string("dataset", None, "Overrides DataConfig.dataset: digits | npz:PATH | "
                    "folder:PATH | tfds:NAME[:SPLIT] | synthetic:N[:SIZE[:C]].")
flags.DEFINE_integer("epochs", None, "Overrides TrainConfig.epochs.", lower_bound=1)
flags.DEFINE_float("time_budget_minutes", None, "Overrides TrainConfig.time_budget_minutes: "
                   "plan the epochs that fit this many minutes on this machine (at most "
                   "TrainConfig.epochs); 0: train exactly TrainConfig.epochs.", lower_bound=0)
flags.DEFINE_integer("max_steps", None, "Overrides TrainConfig.max_steps: stop (with a "
                     "checkpoint) at this global step; rerun with a larger value to go on.",
                     lower_bound=0)
flags.DEFINE_integer("batch_size", None, "Overrides TrainConfig.batch_size (instances per "
                     "step; each gives two views).", lower_bound=1)
flags.DEFINE_integer("virtual_devices", 0, "T virtual CPU devices for the mesh; 0 = the "
                     "real local devices (all GPUs if any, else the CPU).", lower_bound=0)
flags.DEFINE_float("grace_period_s", None, "Overrides FaultConfig.grace_period_s: after a "
                   "SIGTERM or SIGINT the run saves the step it stopped after and exits "
                   "(code 143 / 130) within this many seconds.", lower_bound=0.001)
flags.DEFINE_bool("multi_client", False, "Join a DTensor multi-client run configured by the "
                  "DTENSOR_CLIENT_ID / DTENSOR_NUM_CLIENTS / DTENSOR_JOBS environment.")


_SHORTCUTS = (("dataset", "DataConfig.dataset"), ("epochs", "TrainConfig.epochs"),
              ("batch_size", "TrainConfig.batch_size"),
              ("time_budget_minutes", "TrainConfig.time_budget_minutes"),
              ("max_steps", "TrainConfig.max_steps"),
              ("grace_period_s", "FaultConfig.grace_period_s"))


def _parse_gin():
    import gin

    bindings = list(FLAGS.gin_bindings)
    for flag, binding in _SHORTCUTS:  # the flags that stand for one binding each
        if FLAGS[flag].value is not None:
            bindings.append(f"{binding} = {FLAGS[flag].value!r}")
    for path in FLAGS.gin_file:
        if not os.path.exists(path):
            raise app.UsageError(f"--gin_file not found: {path}")
    try:
        config = gin_config.configs_from_gin(FLAGS.gin_file, bindings)
    except (ValueError, SyntaxError, KeyError) as err:
        raise app.UsageError(f"bad gin config or binding: {err}") from err
    return gin, config


def _config_block(config, mesh, model_dir) -> str:
    """The run's configuration in one block (the full gin config: model_dir/config.gin)."""
    data, model, optim, train = config.data, config.model, config.optim, config.train
    method, classifier = config.method, config.classifier
    width = f", width {model.backbone_width}" if model.backbone_width else ""
    head = f"MLP head {model.head_hidden_dim} -> {model.embedding_dim}" if model.use_head \
        else f"linear head -> {model.embedding_dim}"
    stages = data.train_stages(train.epochs)
    epochs = (f"{train.time_budget_minutes:g} min (epochs planned, at most {train.epochs})"
              if train.time_budget_minutes else f"{train.epochs} epochs")
    views = "" if data.trains_at_image_size else ", training views " + ", ".join(
        f"{side} px" + (f" (epochs {first + 1}-{end})" if len(stages) > 1 else "")
        for first, end, side in stages)
    return "\n".join([
        f"tf_instcls: {method.method} on {data.dataset} ({data.image_size} px{views})",
        f"  model   {model.backbone}{width}, {head}, {model.precision}",
        f"  method  {method.describe()}; W init {classifier.init_mode}",
        f"  train   {epochs} x batch {train.batch_size}, base lr "
        f"{optim.base_learning_rate} per {optim.base_batch_size}, wd {optim.weight_decay}",
        f"  mesh    {mesh.size} {mesh.device_type()} device(s); W {classifier.layout}",
        f"  output  {model_dir} (config.gin, metrics.jsonl, checkpoints/, tb/)"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # our and TF's INFO lines: with --verbosity=0
        logging.set_verbosity(logging.WARNING)
    from tf_instcls import parallel

    if FLAGS.virtual_devices:
        parallel.configure_virtual_devices(FLAGS.virtual_devices)
    if FLAGS.multi_client:
        parallel.initialize_multi_client("CPU" if FLAGS.virtual_devices else None)
    gin, config = _parse_gin()
    name = os.path.splitext(os.path.basename(FLAGS.gin_file[-1]))[0]
    model_dir = FLAGS.model_dir or os.path.join("runs", name)
    # multi-client: one mesh over every device of every process
    local = None if FLAGS.multi_client else (FLAGS.virtual_devices or None)
    mesh = parallel.build_mesh(local, device_type="CPU" if FLAGS.virtual_devices else None)
    print(_config_block(config, mesh, model_dir), flush=True)
    writer = not parallel.is_multi_client() or _client_id() == 0
    from tf_instcls import pretrain
    from tf_instcls.training.run_lock import RunLockedError

    try:
        logs = pretrain.run_pretraining(model_dir, config=config, mesh=mesh,
                                        callbacks=[_gin_config_writer(model_dir, gin, writer)])
    except RunLockedError as err:  # another live run: say so, without a traceback
        print(f"ERROR: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    if writer:
        with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
            f.write(gin.operative_config_str())
    if "stopped_by" in logs:  # a signal: the loop said where it stopped and how to resume
        sys.exit(logs["exit_code"])
    if "stopped_at_step" in logs:
        pass  # the loop said where it stopped and how to go on
    elif not logs:  # resumed at the end: no epoch ran
        print(f"nothing to do: the run in {model_dir} has already finished its "
              f"{config.train.epochs} epochs (results in its metrics.jsonl)", flush=True)
    elif "knn_top1" in logs:
        init = logs.get("knn_top1_at_init")
        extra = f" (at initialisation: {init:.2f}%)" if init is not None else ""
        print(f"kNN top-1: {logs['knn_top1']:.2f}%{extra}", flush=True)
    else:
        print(f"done: loss {logs.get('loss', float('nan')):.4f} (no labels: no kNN accuracy)")


def _gin_config_writer(model_dir, gin, writer: bool):
    """A callback writing model_dir/config.gin once the run holds its model_dir and its
    state is built (a refused run, or a second run on a live one, writes nothing)."""
    import keras

    class GinConfigWriter(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if writer:
                with open(os.path.join(model_dir, "config.gin"), "w") as f:
                    f.write(gin.config_str())

    return GinConfigWriter()


def _client_id():
    from tensorflow.experimental import dtensor

    return dtensor.client_id()


def run():
    """Console-script entry point (``tf-instcls-train``)."""
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)
