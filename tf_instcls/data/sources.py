"""Image sources with stable instance ids, chosen by one spec string.

    digits              scikit-learn's bundled 8x8 digits (no download), upscaled to RGB
    npz:PATH            arrays ``x`` uint8 [n, h, w, c] (c = 1 or 3), optional ``y``
    folder:PATH         image files; class subfolders, if any, give evaluation labels
    tfds:NAME[:SPLIT]   any TFDS image dataset (downloads on the user's machine)
    synthetic:N[:SIZE[:C]]  N distinct SIZE x SIZE images (default 32) generated from the
                        id alone, inside tf.data, in O(1) memory; labels id % C if C given.
                        For scale runs, benchmarks and smoke tests of a config.

Instance ids are the index 0..N-1 in a fixed order (array order; sorted relative paths;
TFDS split order) and never change between epochs, runs or resumes. Every source gives
random access to image i, so an epoch is a seeded permutation of ids and a resumed run
can start in the middle of it. Labels, when present, are for evaluation only:
pretraining never reads them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow as tf
from absl import logging

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclasses.dataclass
class ImageSource:
    """N images with ids 0..N-1.

    Exactly one of ``images`` (uint8 [N, H, W, 3] in memory) or ``paths`` (files decoded
    on the fly) or ``loader`` (random access by id, e.g. TFDS) or ``tf_loader`` (a
    TensorFlow function of the id, e.g. synthetic images) is set.
    """

    name: str
    num_images: int
    image_size: tuple[int, int] | None
    labels: np.ndarray | None = None
    images: np.ndarray | None = None
    paths: list[str] | None = None
    loader: object | None = None
    class_names: list[str] | None = None
    skipped: list[str] = dataclasses.field(default_factory=list)
    tf_loader: object | None = None

    @property
    def num_classes(self) -> int | None:
        return None if self.labels is None else int(self.labels.max()) + 1

    def fingerprint(self) -> str:
        """Identifies the data (name, N, shapes and a sample of content); stored in checkpoints."""
        digest = hashlib.sha256(f"{self.name}|{self.num_images}|{self.image_size}".encode())
        if self.images is not None:
            step = max(1, self.num_images // 64)
            digest.update(np.ascontiguousarray(self.images[::step]).tobytes())
        elif self.paths is not None:
            digest.update("\n".join(self.paths).encode())
        return digest.hexdigest()[:16]

    def subset(self, ids: np.ndarray, name: str) -> ImageSource:
        """The images at ``ids`` as a new source (ids renumbered 0..len-1)."""
        ids = np.asarray(ids)
        return ImageSource(
            name=name,
            num_images=len(ids),
            image_size=self.image_size,
            labels=None if self.labels is None else self.labels[ids],
            images=None if self.images is None else self.images[ids],
            paths=None if self.paths is None else [self.paths[i] for i in ids],
            loader=None if self.loader is None else _SubsetLoader(self.loader, ids),
            class_names=self.class_names,
            tf_loader=None if self.tf_loader is None else _subset_tf_loader(self.tf_loader,
                                                                            ids),
        )

    def load_fn(self, image_size: int | None):
        """A tf.function-compatible ``id -> uint8 [image_size, image_size, 3]``.

        ``image_size=None`` keeps each image's own size.

        In-memory images are gathered from a constant; files are read and decoded; other
        sources go through ``tf.numpy_function``.
        """
        if self.images is not None:
            table = tf.constant(self.images)

            def load(index):
                return resize_uint8(tf.gather(table, index), image_size)

            return load
        if self.paths is not None:
            paths = tf.constant(self.paths)

            def load(index):
                data = tf.io.read_file(tf.gather(paths, index))
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return resize_uint8(image, image_size)

            return load
        if self.tf_loader is not None:
            generate = self.tf_loader

            def load(index):
                return resize_uint8(generate(index), image_size)

            return load
        loader = self.loader

        def load(index):
            image = tf.numpy_function(
                lambda i: np.asarray(loader(int(i)), np.uint8), [index], tf.uint8
            )
            image.set_shape([None, None, 3])
            return resize_uint8(image, image_size)

        return load


def _subset_tf_loader(tf_loader, ids):
    table = tf.constant(np.asarray(ids, np.int64))
    return lambda index: tf_loader(tf.gather(table, index))


def synthetic_image(index, size: int):
    """uint8 [size, size, 3], a pure function of the id: a 4 x 4 grid of random colours,
    smoothly upsampled, plus fine noise. Distinct ids give distinct images (48 + 3 size^2
    independent draws); nothing is stored."""
    seed = tf.stack([tf.cast(index, tf.int64), tf.constant(0x5EED, tf.int64)])
    coarse_seed, fine_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    coarse = tf.random.stateless_uniform([1, 4, 4, 3], coarse_seed, 0.0, 255.0)
    image = tf.image.resize(coarse, [size, size], method="bilinear")[0]
    image += tf.random.stateless_uniform([size, size, 3], fine_seed, -24.0, 24.0)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def load_synthetic(spec: str) -> ImageSource:
    """``N[:SIZE[:C]]`` (the part after ``synthetic:``)."""
    parts = spec.split(":")
    try:
        if not 1 <= len(parts) <= 3:
            raise ValueError
        n = int(parts[0])
        size = int(parts[1]) if len(parts) > 1 else 32
        classes = int(parts[2]) if len(parts) > 2 else None
    except ValueError:
        raise ValueError(f"bad synthetic dataset spec 'synthetic:{spec}'; expected "
                         "'synthetic:N[:SIZE[:C]]' with integers, e.g. synthetic:200000:16 "
                         "or synthetic:50000:32:10") from None
    if n < 1 or size < 8 or (classes is not None and not 2 <= classes <= n):
        raise ValueError(f"synthetic:{spec}: needs N >= 1, SIZE >= 8 and 2 <= C <= N; got "
                         f"N = {n}, SIZE = {size}, C = {classes}")
    labels = None
    if classes is not None:
        labels = np.arange(n, dtype=np.int64) % classes
    return ImageSource(
        name=f"synthetic:{spec}", num_images=n, image_size=(size, size), labels=labels,
        tf_loader=lambda index: synthetic_image(index, size),
        class_names=None if classes is None else [str(c) for c in range(classes)],
    )


class _SubsetLoader:
    def __init__(self, loader, ids):
        self.loader, self.ids = loader, ids

    def __call__(self, index):
        return self.loader(int(self.ids[index]))


def resize_uint8(image, size):
    """uint8 image [h, w, 3] (or batch) -> uint8 [size, size, 3], as every source loads."""
    if size is None:  # keep the native size (the random resized crop works on it)
        return tf.ensure_shape(image, [None, None, 3])
    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _to_rgb_uint8(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise ValueError(f"{what}: images must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{what}: images must be [n, h, w, 1 or 3]; got shape {x.shape}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def load_digits(upscale: int = 4) -> ImageSource:
    """scikit-learn's 1,797 bundled 8x8 digits, as uint8 RGB 32x32 (no download)."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    gray = np.round(data.images / 16.0 * 255.0).astype(np.uint8)  # [n, 8, 8]
    gray = np.kron(gray, np.ones((upscale, upscale), np.uint8))
    return ImageSource(
        name="digits", num_images=len(gray), image_size=gray.shape[1:3],
        labels=data.target.astype(np.int64), images=_to_rgb_uint8(gray, "digits"),
        class_names=[str(i) for i in range(10)],
    )


def load_npz(path: str) -> ImageSource:
    if not os.path.exists(path):
        raise FileNotFoundError(f"npz dataset not found: {path}")
    try:
        with np.load(path) as data:
            if "x" not in data:
                raise ValueError(
                    f"{path}: needs an array 'x' (uint8 [n, h, w, c]); has {list(data)}"
                )
            x = data["x"]
            y = data["y"] if "y" in data else None
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read npz dataset {path}: {err}") from err
    x = _to_rgb_uint8(x, path)
    if y is not None:
        y = np.asarray(y).reshape(-1).astype(np.int64)
        if len(y) != len(x):
            raise ValueError(f"{path}: {len(y)} labels for {len(x)} images")
    return ImageSource(
        name=f"npz:{os.path.basename(path)}", num_images=len(x), image_size=x.shape[1:3],
        labels=y, images=x,
    )


def _image_is_readable(path: str) -> bool:
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return image.shape[0] > 0 and image.shape[1] > 0
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, ValueError):
        return False


def load_folder(root: str, *, skip_corrupt: bool = False, verify: bool = True) -> ImageSource:
    """Image files below ``root``, ids in sorted relative-path order.

    With ``verify`` every file is decoded once up front: a corrupt file raises an error
    naming it, or with ``skip_corrupt`` is left out (logged, ids assigned after).
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    files = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.relpath(os.path.join(dirpath, name), root))
    files.sort()
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) below {root}")
    skipped = []
    if verify:
        good = []
        for i, rel in enumerate(files):
            if _image_is_readable(os.path.join(root, rel)):
                good.append(rel)
            elif skip_corrupt:
                skipped.append(rel)
            else:
                raise ValueError(
                    f"corrupt or undecodable image: {os.path.join(root, rel)} "
                    "(pass skip_corrupt=True / --skip_corrupt_images to leave such files out)"
                )
            if (i + 1) % 10000 == 0:
                logging.info("verified %d / %d images", i + 1, len(files))
        if skipped:
            logging.warning("skipped %d corrupt images: %s", len(skipped), skipped[:20])
        files = good
    top = sorted({f.split(os.sep)[0] for f in files if os.sep in f})
    labels = class_names = None
    if top and all(os.sep in f for f in files):
        index = {name: i for i, name in enumerate(top)}
        labels = np.array([index[f.split(os.sep)[0]] for f in files], np.int64)
        class_names = top
    return ImageSource(
        name=f"folder:{os.path.basename(os.path.normpath(root))}", num_images=len(files),
        image_size=None, labels=labels, paths=[os.path.join(root, f) for f in files],
        class_names=class_names, skipped=skipped,
    )


def _tfds_labels(name, split, data_dir, image_key, label_key, count) -> np.ndarray:
    """Every label of a TFDS split, read without decoding a single image: a second
    data source whose image feature is skipped (its bytes are not even decoded)."""
    import tensorflow_datasets as tfds

    skip = tfds.data_source(name, split=split, data_dir=data_dir,
                            decoders={image_key: tfds.decode.SkipDecoding()})
    labels = np.empty(count, np.int64)
    for i in range(count):
        labels[i] = skip[i][label_key]
        if (i + 1) % 100_000 == 0:
            logging.info("read %d / %d labels of tfds:%s:%s", i + 1, count, name, split)
    return labels


def load_tfds(name: str, split: str = "train", data_dir: str | None = None) -> ImageSource:
    """A TFDS image dataset with random access (``tfds.data_source``), ids in split order."""
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as err:  # TFDS raises many types (download, format, not found)
        raise ValueError(f"cannot open TFDS dataset {name!r} split {split!r}: {err}") from err
    info = source.dataset_info
    image_key = next((k for k, f in info.features.items()
                      if isinstance(f, tfds.features.Image)), None)
    if image_key is None:
        raise ValueError(f"TFDS dataset {name!r} has no image feature")
    label_key = "label" if "label" in info.features else None
    labels = None
    if label_key is not None:
        labels = _tfds_labels(name, split, data_dir, image_key, label_key, len(source))

    def loader(index):  # a decoded image in Python (plots and other host-side uses)
        return source[index][image_key]

    # The input pipeline fetches only the encoded bytes in Python (holding the GIL for a
    # lookup, not for a JPEG decode) and decodes them in TensorFlow, in parallel.
    encoded = tfds.data_source(name, split=split, data_dir=data_dir,
                               decoders={image_key: tfds.decode.SkipDecoding()})

    def tf_loader(index):
        data = tf.numpy_function(lambda i: np.bytes_(encoded[int(i)][image_key]), [index],
                                 tf.string, stateful=False)
        data.set_shape([])
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    shape = info.features[image_key].shape
    return ImageSource(
        name=f"tfds:{name}:{split}", num_images=len(source),
        image_size=tuple(shape[:2]) if shape and shape[0] else None, labels=labels,
        loader=loader, tf_loader=tf_loader,
        class_names=(info.features[label_key].names if label_key else None),
    )


def load_source(spec: str, *, skip_corrupt: bool = False) -> ImageSource:
    """Parses a dataset spec string (see the module docstring)."""
    if spec == "digits":
        return load_digits()
    kind, _, rest = spec.partition(":")
    if kind == "npz" and rest:
        return load_npz(rest)
    if kind == "folder" and rest:
        return load_folder(rest, skip_corrupt=skip_corrupt)
    if kind == "tfds" and rest:
        name, _, split = rest.partition(":")
        return load_tfds(name, split or "train")
    if kind == "synthetic" and rest:
        return load_synthetic(rest)
    raise ValueError(
        f"unknown dataset spec {spec!r}; expected 'digits', 'npz:PATH', 'folder:PATH', "
        "'tfds:NAME[:SPLIT]' or 'synthetic:N[:SIZE[:C]]'"
    )


def split_holdout(source: ImageSource, fraction: float, seed: int = 0):
    """(train, holdout): a seeded, class-stratified holdout for evaluation only.

    Pretraining runs on ``train`` (its own ids 0..n-1); ``holdout`` is the kNN query set.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1); got {fraction}")
    rng = np.random.default_rng(seed)
    n = source.num_images
    if source.labels is None:
        order = rng.permutation(n)
        held = np.sort(order[: int(round(n * fraction))])
    else:
        held = []
        for c in np.unique(source.labels):
            members = np.flatnonzero(source.labels == c)
            take = int(round(len(members) * fraction))
            held.extend(rng.permutation(members)[:take])
        held = np.sort(np.array(held, np.int64))
    keep = np.setdiff1d(np.arange(n), held)
    train = source.subset(keep, source.name + ":train")
    return train, source.subset(held, source.name + ":holdout")


@dataclasses.dataclass(frozen=True)
class LabelledSplits:
    """What every evaluator reads (``evaluator.run(model, splits)``): a labelled training
    split (the kNN bank, the linear / fine-tuning training set) and a labelled evaluation
    split (the queries), with the seed of any random choice an evaluator makes."""

    train: ImageSource
    evaluation: ImageSource
    seed: int = 0
    description: dict = dataclasses.field(default_factory=dict)
    classes: int | None = None  # None: 1 + the largest label of either split

    def __post_init__(self):
        for name in ("train", "evaluation"):
            if getattr(self, name).labels is None:
                raise ValueError(f"the {name} split ({getattr(self, name).name}) has no "
                                 "labels: evaluation needs labelled data")

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return self.classes
        return int(max(self.train.labels.max(), self.evaluation.labels.max())) + 1
