"""SimCLR-style augmentation (the paper's), stateless: the same (seed, epoch, id, view)
always gives the same view, in eager mode, in tf.data, before and after a resume.

Random resized crop, horizontal flip, colour jitter (brightness, contrast, saturation,
hue; applied with probability p), grayscale (p) and Gaussian blur (p). Built from
TensorFlow's stateless image ops instead of Keras' random layers. The Keras layers keep
a stateful seed generator, so a resumed run would not replay the same views without
checkpointing the generator inside tf.data; stateless ops make the data a pure function
of (seed, epoch, id), so "data position and RNG state" reduce to (epoch, step).
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation hyperparameters (defaults: the paper's / SimCLR's, CIFAR-size crop)."""

    image_size: int = 32
    crop_scale: tuple[float, float] = (0.2, 1.0)  # ImageNet: (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jitter_strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0  # ImageNet-size images: 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self):
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1; got {self.crop_scale}")
        for name in ("jitter_prob", "grayscale_prob", "blur_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {value}")
        strength = tuple(self.jitter_strength)
        if len(strength) != 4 or min(strength) < 0 or strength[3] > 0.5:
            raise ValueError("jitter_strength must be (brightness, contrast, saturation, hue), "
                             f"each >= 0 and hue <= 0.5; got {self.jitter_strength}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8; got {self.image_size}")


def default_config(image_size: int) -> AugmentConfig:
    """Paper defaults by image size: ImageNet-size (>= 96 px) gets 0.08 crops and blur."""
    if image_size >= 96:
        return AugmentConfig(image_size=image_size, crop_scale=(0.08, 1.0), blur_prob=0.5)
    return AugmentConfig(image_size=image_size)


def supervised_config(image_size: int) -> AugmentConfig:
    """"Standard augmentation" of linear evaluation / fine-tuning: random resized crop
    and flip only (ImageNet-size: crops of 8-100%; small images: 50-100%)."""
    scale = (0.08, 1.0) if image_size >= 96 else (0.5, 1.0)
    return AugmentConfig(image_size=image_size, crop_scale=scale, jitter_prob=0.0,
                         grayscale_prob=0.0, blur_prob=0.0)


def view_seed(seed, epoch, instance_id, view) -> tf.Tensor:
    """Stateless seed [2] for one view of one instance in one epoch."""
    mixed = tf.stack([
        tf.cast(seed, tf.int64) * 1000003 + tf.cast(epoch, tf.int64),
        tf.cast(instance_id, tf.int64) * 8 + tf.cast(view, tf.int64),
    ])
    return tf.random.experimental.stateless_fold_in(mixed, 0x5EED)


def _split(seed, count):
    return tf.unstack(tf.random.experimental.stateless_split(seed, count))


def _uniform(seed, lo=0.0, hi=1.0):
    return tf.random.stateless_uniform([], seed, lo, hi)


def random_resized_crop(image, seed, config: AugmentConfig):
    """Inception-style crop of random area and aspect ratio, resized to image_size."""
    lo, hi = config.crop_ratio
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=(lo, hi),
        area_range=config.crop_scale, max_attempts=100, use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    return tf.image.resize(crop, [config.image_size, config.image_size], antialias=True)


def sample_view_params(seed, config: AugmentConfig) -> dict:
    """The random draws of one view's photometric ops (scalars; ``order`` [4]).

    Drawn from the view's seed exactly as TensorFlow's ``stateless_random_brightness``
    / ``_contrast`` / ``_saturation`` / ``_hue`` draw them, so the draws do not depend
    on how the images are later batched.
    """
    seeds = _split(seed, 7)
    jitter = _split(seeds[3], 5)
    b, c, s, h = config.jitter_strength
    return {
        "jitter": _uniform(seeds[2]) < config.jitter_prob,
        "brightness": _uniform(jitter[0], -b, b),
        "contrast": _uniform(jitter[1], 1 - c, 1 + c),
        "saturation": _uniform(jitter[2], 1 - s, 1 + s),
        "hue": _uniform(jitter[3], -h, h),
        "order": tf.cast(tf.argsort(tf.random.stateless_uniform([4], jitter[4])), tf.int32),
        "grayscale": _uniform(seeds[4]) < config.grayscale_prob,
        "blur": _uniform(seeds[5]) < config.blur_prob,
        "sigma": _uniform(seeds[6], *config.blur_sigma),
    }


def crop_flip(image_uint8, seed, config: AugmentConfig):
    """One view's geometric part, per image: random resized crop and flip, [0, 1] float."""
    seeds = _split(seed, 7)
    image = tf.image.convert_image_dtype(image_uint8, tf.float32)
    image = random_resized_crop(image, seeds[0], config)
    if config.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    return image


def _per_image(values, images):
    """[n] -> [n, 1, 1, 1], broadcast against images [n, h, w, c]."""
    return tf.reshape(tf.cast(values, images.dtype), [-1, 1, 1, 1])


def _brightness(images, delta):
    return images + _per_image(delta, images)


def _contrast(images, factor):
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return (images - mean) * _per_image(factor, images) + mean


def _saturation(images, factor):
    hsv = tf.image.rgb_to_hsv(images)
    hue, sat, value = tf.unstack(hsv, axis=-1)
    sat = tf.clip_by_value(sat * _per_image(factor, images)[..., 0], 0.0, 1.0)
    return tf.image.hsv_to_rgb(tf.stack([hue, sat, value], axis=-1))


def _hue(images, delta):
    hsv = tf.image.rgb_to_hsv(images)
    hue, sat, value = tf.unstack(hsv, axis=-1)
    hue = tf.math.floormod(hue + _per_image(delta, images)[..., 0], 1.0)
    return tf.image.hsv_to_rgb(tf.stack([hue, sat, value], axis=-1))


def color_jitter(images, params, config: AugmentConfig):
    """Brightness, contrast, saturation, hue (SimCLR's strengths) in each image's own
    random order, on the images whose ``params["jitter"]`` is set; a batch [n, h, w, 3].

    At each of the four positions the batch is partitioned by the op that comes there
    (a fifth part: the images without jitter), each part gets its op in one batched
    call, and the parts are stitched back in order: every image gets exactly its own
    ops, and the per-image graph overhead (a switch per op) is paid once per batch.
    """
    strengths = config.jitter_strength
    ops = [(_brightness, "brightness"), (_contrast, "contrast"), (_saturation, "saturation"),
           (_hue, "hue")]
    positions = tf.range(tf.shape(images)[0])
    for position in range(4):
        which = tf.where(params["jitter"], params["order"][:, position], 4)
        parts = tf.dynamic_partition(images, which, 5)
        indices = tf.dynamic_partition(positions, which, 5)
        out = []
        for k, (op, key) in enumerate(ops):
            part = parts[k]
            if strengths[k]:
                part = op(part, tf.gather(params[key], indices[k]))
            out.append(tf.clip_by_value(part, 0.0, 1.0))
        out.append(parts[4])
        images = tf.dynamic_stitch(indices, out)
    return images


def gaussian_blur(images, sigma, config: AugmentConfig):
    """Separable Gaussian blur of a batch [n, h, w, 3], kernel 10% of the image side,
    each image with its own sigma [n] (reflected borders)."""
    radius = max(1, int(math.ceil(config.image_size * 0.1 / 2)))
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    sigma = tf.reshape(tf.cast(sigma, tf.float32), [-1, 1])
    kernel = tf.exp(-(x**2) / (2.0 * sigma**2))  # [n, 2r + 1]
    kernel /= tf.reduce_sum(kernel, axis=1, keepdims=True)
    taps = 2 * radius + 1
    batch = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                   mode="REFLECT")
    width = tf.shape(images)[2]
    height = tf.shape(images)[1]
    horizontal = sum(batch[:, :, k : k + width, :] * tf.reshape(kernel[:, k], [-1, 1, 1, 1])
                     for k in range(taps))
    return sum(horizontal[:, k : k + height, :, :] * tf.reshape(kernel[:, k], [-1, 1, 1, 1])
               for k in range(taps))


def photometric(images, params, config: AugmentConfig):
    """The photometric part of a batch of views [n, h, w, 3] ([0, 1] float, from
    :func:`crop_flip`) with their stacked :func:`sample_view_params`: colour jitter,
    grayscale, blur, then the mean/std normalisation. Batched: the train pipeline runs
    it once per batch, after ``Dataset.batch``."""
    if config.jitter_prob > 0:
        images = color_jitter(images, params, config)
    if config.grayscale_prob > 0:
        gray = tf.tile(tf.image.rgb_to_grayscale(images), [1, 1, 1, 3])
        images = tf.where(_per_image(params["grayscale"], images) > 0, gray, images)
    if config.blur_prob > 0:
        blurred = gaussian_blur(images, params["sigma"], config)
        images = tf.where(_per_image(params["blur"], images) > 0, blurred, images)
    return normalize(images)


def augment_view(image_uint8, seed, config: AugmentConfig):
    """One augmented view, float32 [S, S, 3] normalised with the ImageNet mean/std:
    :func:`crop_flip`, then :func:`photometric` as a batch of one (the same code the
    train pipeline runs on whole batches)."""
    params = {k: v[tf.newaxis] for k, v in sample_view_params(seed, config).items()}
    return photometric(crop_flip(image_uint8, seed, config)[tf.newaxis], params, config)[0]


def normalize(image_float):
    """[0, 1] RGB -> mean/std normalised; one image [h, w, 3] or a batch [b, h, w, 3]."""
    image = (image_float - tf.constant(MEAN)) / tf.constant(STD)
    return tf.ensure_shape(image, [None] * (image.shape.rank - 1) + [3])


def eval_view(image_uint8, image_size: int):
    """The unaugmented view: resize (shorter side * 1.14) + centre crop for large images.

    Takes one image [h, w, 3] or a batch [b, h, w, 3] (the serving signature's path).
    """
    image = tf.image.convert_image_dtype(image_uint8, tf.float32)
    if image_size >= 96:
        resize = int(round(image_size / 0.875))
        image = tf.image.resize(image, [resize, resize], antialias=True)
        offset = (resize - image_size) // 2
        image = image[..., offset : offset + image_size, offset : offset + image_size, :]
    else:
        image = tf.image.resize(image, [image_size, image_size], antialias=True)
    return normalize(tf.clip_by_value(image, 0.0, 1.0))
