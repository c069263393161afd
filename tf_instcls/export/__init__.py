"""Shipping the encoder: restore it from a run, export a SavedModel for TF Serving."""

from tf_instcls.eval.restore import (  # reading runs and exports
    RestoredEncoder,
    find_checkpoint,
    load_encoder,
    load_export_info,
    read_run_info,
    resolve_export_dir,
    restore_encoder,
)
from tf_instcls.export.saved_model import SIGNATURES, export_encoder, serving_functions

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
