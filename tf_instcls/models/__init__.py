"""Backbones (registry) and the encoder with its projection head."""

from tf_instcls.models.backbones import backbone_names, create_backbone, register_backbone
from tf_instcls.models.batchnorm import use_fused_batchnorm
from tf_instcls.models.encoder import PRECISIONS, build_encoder, build_projection_head

__all__ = [
    "PRECISIONS",
    "backbone_names",
    "build_encoder",
    "build_projection_head",
    "create_backbone",
    "register_backbone",
    "use_fused_batchnorm",
]
