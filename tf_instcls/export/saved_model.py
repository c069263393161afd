"""SavedModel export for TF Serving: backbone + head only, plain single-device variables.

Layout (TF Serving's): ``<export_base>/<version>/`` with ``saved_model.pb``,
``variables/`` and ``assets.extra/`` (ignored by the model server) holding
``encoder.keras`` (the same encoder as a Keras file, for fine-tuning with BN in
training mode) and ``export_info.json`` (run_info, step, image size, signatures).

Signatures (both return ``embedding`` [b, D] L2-normalised head output and ``features``
[b, F] pooled backbone features, BN in inference mode):
  serving_default(images: uint8 [b, h, w, 3], any h, w)
  serve_bytes(image_bytes: string [b], encoded JPEG / PNG / BMP / GIF)
Images are resized and normalised inside exactly as evaluation does
(``data.eval_preprocess``), so served outputs equal the evaluation features.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import keras
import tensorflow as tf

from tf_instcls import data as data_lib
from tf_instcls.data.sources import resize_uint8
from tf_instcls.eval.restore import INFO_FILE, KERAS_FILE

SIGNATURES = ("serving_default", "serve_bytes")


def _check_images(images):
    """Checks with messages a client can act on. A restored signature does not enforce
    its declared shape, and grappler folds shape asserts against the declared static
    shape away; ``EnsureShape`` survives and says "Shape of tensor images [..] is not
    compatible with expected shape [?,?,?,3]"."""
    images = tf.ensure_shape(images, [None, None, None, 3])
    shape = tf.shape(images)
    nonempty = tf.debugging.assert_positive(
        shape[1] * shape[2], message="images must have height and width > 0")
    with tf.control_dependencies([nonempty]):
        return tf.identity(images)


def serving_functions(encoder: keras.Model, image_size: int) -> dict:
    """The two signature functions (tf.functions) over ``encoder``."""

    def outputs(images_uint8):
        pixels = data_lib.eval_preprocess(_check_images(images_uint8), image_size)
        out = encoder(pixels, training=False)
        return {
            "embedding": tf.math.l2_normalize(out["embedding"], axis=-1),
            "features": tf.identity(out["features"]),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                name="images")])
    def serve(images):
        return outputs(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(image_bytes):
        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return resize_uint8(image, image_size)

        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec(
            [image_size, image_size, 3], tf.uint8))
        return outputs(images)

    return {"serving_default": serve, "serve_bytes": serve_bytes}


def default_version(export_base: str, step: int) -> str:
    """The training step (TF Serving wants an integer version); a timestamp if taken."""
    if not os.path.exists(os.path.join(export_base, str(step))):
        return str(step)
    return str(int(time.time()))


def export_encoder(encoder: keras.Model, export_base: str, *, image_size: int,
                   version: str | None = None, step: int = 0, run_info: dict | None = None,
                   overwrite: bool = False, verbose: bool = False) -> str:
    """Writes ``<export_base>/<version>/``; returns that path.

    Written to a temporary sibling and renamed at the end, so a model server watching
    ``export_base`` never sees a half-written version.
    """
    version = version or default_version(export_base, step)
    if not version.isdigit():
        raise ValueError(f"version must be an integer (TF Serving's layout); got {version!r}")
    target = os.path.join(export_base, version)
    if os.path.exists(target):
        if not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) or "
                                  "another version")
    os.makedirs(export_base, exist_ok=True)
    tmp = os.path.join(export_base, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, encoder, image_size, step, run_info, verbose)
    except BaseException:  # an error, or an interrupted export (SIGTERM): publish nothing
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def _write(tmp: str, encoder, image_size: int, step, run_info, verbose: bool) -> None:
    """The SavedModel, the Keras copy and the export's info, into ``tmp``."""
    functions = serving_functions(encoder, image_size)
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    for name, fn in functions.items():
        archive.add_endpoint(name, fn)
    archive.write_out(tmp, verbose=verbose)
    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    encoder.save(os.path.join(tmp, KERAS_FILE))
    info = {
        "step": step, "image_size": image_size, "signatures": list(SIGNATURES),
        "embedding_dim": int(encoder.output["embedding"].shape[-1]),
        "feature_dim": int(encoder.output["features"].shape[-1]),
        "run_info": run_info or {},
    }
    with open(os.path.join(tmp, INFO_FILE), "w") as f:
        json.dump(info, f, indent=1)
