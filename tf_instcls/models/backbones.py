"""Backbones, picked by name: ``create_backbone(name, image_size, width)``.

Each returns a Keras model ``images [B, S, S, 3] -> pooled features [B, F]``;
``image_size=None`` builds it for any side S (training views smaller than the
evaluation images: ``DataConfig.train_image_size``).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from tf_instcls.models.batchnorm import BatchNorm

_REGISTRY: dict[str, Callable[..., keras.Model]] = {}


def register_backbone(name: str):
    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, image_size: int | None, width: int | None = None) -> keras.Model:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose from {backbone_names()}")
    kwargs = {} if width is None else {"width": width}
    return _REGISTRY[name](image_size=image_size, **kwargs)


def _conv_bn_relu(x, filters, stride=1, name=""):
    x = layers.Conv2D(filters, 3, stride, padding="same", use_bias=False, name=name + "conv")(x)
    x = BatchNorm(momentum=0.9, epsilon=1e-5, name=name + "bn")(x)
    return layers.ReLU(name=name + "relu")(x)


@register_backbone("convnet_small")
def convnet_small(image_size: int | None, width: int = 32) -> keras.Model:
    """Four conv-BN-ReLU stages (stride 2 from the second): the smoke/demo backbone."""
    inputs = keras.Input([image_size, image_size, 3])
    x = inputs
    for stage, mult in enumerate((1, 2, 4, 8)):
        x = _conv_bn_relu(x, width * mult, stride=1 if stage == 0 else 2, name=f"s{stage}_")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, x, name="convnet_small")


def _basic_block(x, filters, stride, name):
    shortcut = x
    y = _conv_bn_relu(x, filters, stride, name=name + "a_")
    y = layers.Conv2D(filters, 3, 1, padding="same", use_bias=False, name=name + "b_conv")(y)
    y = BatchNorm(momentum=0.9, epsilon=1e-5, name=name + "b_bn")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, stride, use_bias=False, name=name + "sc_conv")(x)
        shortcut = BatchNorm(momentum=0.9, epsilon=1e-5, name=name + "sc_bn")(shortcut)
    return layers.ReLU(name=name + "out")(layers.Add(name=name + "add")([y, shortcut]))


@register_backbone("resnet18_cifar")
def resnet18_cifar(image_size: int | None, width: int = 64) -> keras.Model:
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max pool); width scales it."""
    inputs = keras.Input([image_size, image_size, 3])
    x = _conv_bn_relu(inputs, width, 1, name="stem_")
    for stage, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2))):
        for block in range(2):
            x = _basic_block(x, width * mult, stride if block == 0 else 1, f"l{stage}b{block}_")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, x, name="resnet18_cifar")


@register_backbone("resnet50")
def resnet50(image_size: int | None, width: int = 64) -> keras.Model:
    """The paper's ResNet-50 (Keras applications, random init, global average pool)."""
    if width != 64:
        raise ValueError("resnet50 has a fixed width (64); do not set backbone width")
    return keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3), pooling="avg"
    )
