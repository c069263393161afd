r"""Exports a pretraining run's encoder (backbone + head, never W) as a SavedModel in
TF Serving's versioned layout.

  python tools/export.py --model_dir=runs/digits
  python tools/export.py --model_dir=runs/digits --checkpoint=310 --export_dir=/models/enc

Writes ``<export_dir>/<version>/`` (default ``<model_dir>/export/<step>/``) with the
signatures ``serving_default`` (uint8 images) and ``serve_bytes`` (encoded JPEG/PNG),
plus ``assets.extra/encoder.keras`` for fine-tuning in Keras. Plain single-device
variables: loads on any machine, with or without a mesh. See README, "Serving".
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "The pretraining run's --model_dir.")
flags.DEFINE_string("export_dir", None, "Export base; the version goes below it "
                    "(default: <model_dir>/export).")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or step (default: the latest).")
flags.DEFINE_string("version", None, "Integer version directory (default: the training step; "
                    "a timestamp if that one exists).")
flags.DEFINE_bool("overwrite", False, "Replace an existing version directory.")
flags.mark_flag_as_required("model_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import time

    from tf_instcls import export
    from tf_instcls.training import stages

    start = time.perf_counter()
    _stop_on_signals()
    try:
        restored = export.restore_encoder(FLAGS.model_dir, FLAGS.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err)) from err
    base = FLAGS.export_dir or os.path.join(FLAGS.model_dir, "export")
    try:
        path = export.export_encoder(
            restored.encoder, base, image_size=restored.image_size, version=FLAGS.version,
            step=restored.step, run_info=restored.run_info, overwrite=FLAGS.overwrite,
        )
    except (FileExistsError, ValueError) as err:
        raise app.UsageError(str(err)) from err
    # the export's time and memory beside the run's other stages (its stages.jsonl)
    stages.record(FLAGS.model_dir, "export", time.perf_counter() - start, step=restored.step,
                  path=str(path))
    print(f"exported step {restored.step} ({restored.checkpoint_path}) to {path}", flush=True)


def _stop_on_signals() -> None:
    """SIGTERM / SIGINT end the export at once, with nothing published (it is written to
    a temporary directory, removed on the way out) and exit code 128 + the signal."""
    import signal

    def stop(signum, frame):
        del frame
        print(f"export interrupted by {signal.Signals(signum).name}: nothing was "
              "published", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def run():
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)
