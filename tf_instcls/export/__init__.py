"""Shipping the encoder: restore it from a run, export a SavedModel for TF Serving."""

from tf_instcls.export.saved_model import SIGNATURES, export_encoder, serving_functions
from tf_instcls.training.restore import (  # reading runs and exports: below eval
    RestoredEncoder,
    find_checkpoint,
    load_encoder,
    load_export_info,
    read_run_info,
    resolve_export_dir,
    restore_encoder,
)

__all__ = [
    "SIGNATURES",
    "RestoredEncoder",
    "export_encoder",
    "find_checkpoint",
    "load_encoder",
    "load_export_info",
    "read_run_info",
    "resolve_export_dir",
    "restore_encoder",
    "serving_functions",
]
