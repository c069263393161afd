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


def color_jitter(image, seed, config: AugmentConfig):
    """Brightness, contrast, saturation, hue (SimCLR's strengths), in a random order."""
    b, c, s, h = config.jitter_strength
    seeds = _split(seed, 5)
    ops = [
        lambda x: tf.image.stateless_random_brightness(x, b, seeds[0]) if b else x,
        lambda x: tf.image.stateless_random_contrast(x, 1 - c, 1 + c, seeds[1]) if c else x,
        lambda x: tf.image.stateless_random_saturation(x, 1 - s, 1 + s, seeds[2]) if s else x,
        lambda x: tf.image.stateless_random_hue(x, h, seeds[3]) if h else x,
    ]
    order = tf.argsort(tf.random.stateless_uniform([4], seeds[4]))
    for position in range(4):
        image = tf.switch_case(order[position],
                               [lambda op=op, image=image: op(image) for op in ops])
        image = tf.clip_by_value(image, 0.0, 1.0)
    return image


def gaussian_blur(image, seed, config: AugmentConfig):
    """Separable Gaussian blur, kernel 10% of the image side, sigma ~ U(blur_sigma)."""
    sigma = _uniform(seed, *config.blur_sigma)
    radius = max(1, int(math.ceil(config.image_size * 0.1 / 2)))
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(x**2) / (2.0 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, 3, 1])
    vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, 3, 1])
    batch = image[tf.newaxis]
    batch = tf.pad(batch, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    batch = tf.nn.depthwise_conv2d(batch, horizontal, [1, 1, 1, 1], "VALID")
    batch = tf.nn.depthwise_conv2d(batch, vertical, [1, 1, 1, 1], "VALID")
    return batch[0]


def augment_view(image_uint8, seed, config: AugmentConfig):
    """One augmented view, float32 [S, S, 3] normalised with the ImageNet mean/std."""
    seeds = _split(seed, 7)
    image = tf.image.convert_image_dtype(image_uint8, tf.float32)
    image = random_resized_crop(image, seeds[0], config)
    if config.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    if config.jitter_prob > 0:
        image = tf.cond(_uniform(seeds[2]) < config.jitter_prob,
                        lambda: color_jitter(image, seeds[3], config), lambda: image)
    if config.grayscale_prob > 0:
        image = tf.cond(_uniform(seeds[4]) < config.grayscale_prob,
                        lambda: tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3]),
                        lambda: image)
    if config.blur_prob > 0:
        image = tf.cond(_uniform(seeds[5]) < config.blur_prob,
                        lambda: gaussian_blur(image, seeds[6], config), lambda: image)
    return normalize(image)


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
