"""Encoder = backbone + projection head (the paper's 2-layer MLP, or none: Table 2)."""

from __future__ import annotations

import keras
from keras import layers

from tf_instcls import defaults
from tf_instcls.models.backbones import create_backbone
from tf_instcls.models.batchnorm import BatchNorm


def build_projection_head(in_dim: int, hidden_dim: int, out_dim: int, *,
                          output_bn: bool = False) -> keras.Model:
    """Linear -> BN -> ReLU -> Linear, the paper's MLP head to D (128).

    ``output_bn`` (beyond the paper; SimSiam's and MoCo v3's projectors end the same
    way): a BatchNormalization without scale and shift after the last layer, so the
    embeddings are centred over the batch instead of sitting in a cone.
    """
    inputs = keras.Input([in_dim])
    x = layers.Dense(hidden_dim, use_bias=False, name="head_fc1")(inputs)
    x = BatchNorm(momentum=0.9, epsilon=1e-5, name="head_bn")(x)
    x = layers.ReLU(name="head_relu")(x)
    x = layers.Dense(out_dim, use_bias=not output_bn, name="head_fc2")(x)
    if output_bn:
        x = BatchNorm(momentum=0.9, epsilon=1e-5, center=False, scale=False,
                      name="head_out_bn")(x)
    return keras.Model(inputs, x, name="projection_head")


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def build_encoder(
    backbone: str,
    image_size: int | None,
    *,
    embedding_dim: int = defaults.EMBEDDING_DIM,
    head_hidden_dim: int = defaults.HEAD_HIDDEN_DIM,
    use_head: bool = True,
    backbone_width: int | None = None,
    precision: str = "float32",
    head_output_bn: bool = False,
) -> keras.Model:
    """Keras model ``images -> {"features": [B, F], "embedding": [B, D]}``.

    Without a head (``use_head=False``) a single linear layer maps features to D, as
    the paper's "no MLP" row (the classifier needs D-dim embeddings).

    ``image_size``: the input side; None: any side (a fully convolutional backbone).
    ``precision``: the Keras dtype policy of the backbone and head ("mixed_bfloat16",
    "mixed_float16": float32 variables, 16-bit compute). Inputs and both outputs stay
    float32 (the classifier, W and the softmax are always float32).
    ``head_output_bn``: the head ends in a BatchNormalization (``build_projection_head``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)  # read by every layer built below
    try:
        net = create_backbone(backbone, image_size, backbone_width)
        features = net.output
        in_dim = features.shape[-1]
        if use_head:
            head = build_projection_head(in_dim, head_hidden_dim, embedding_dim,
                                         output_bn=head_output_bn)
        else:
            if head_output_bn:
                raise ValueError("head_output_bn needs the MLP head (use_head=True)")
            inputs = keras.Input([in_dim])
            head = keras.Model(inputs, layers.Dense(embedding_dim, name="head_linear")(inputs),
                               name="linear_head")
        embedding = head(features)
    finally:
        keras.config.set_dtype_policy(previous)
    if precision != "float32":
        features = layers.Activation("linear", dtype="float32", name="features_f32")(features)
        embedding = layers.Activation("linear", dtype="float32", name="embedding_f32")(embedding)
    return keras.Model(net.input, {"features": features, "embedding": embedding}, name="encoder")
