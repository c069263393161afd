"""DTensor mesh, layouts and the sharded instance classifier.

This package is the one place that imports ``tensorflow.experimental.dtensor``;
everything else asks it for layouts and relayouts.
"""

from tf_instcls.parallel.classifier import InstanceClassifier, padded_num_classes
from tf_instcls.parallel.layouts import (
    batch_layout,
    pack_sharded,
    replicated_layout,
    row_sharded_layout,
    to_numpy,
)
from tf_instcls.parallel.mesh import (
    PEER_ERRORS,
    Mesh,
    build_mesh,
    configure_virtual_devices,
    cpu_emulates_bfloat16,
    initialize_multi_client,
    is_multi_client,
    process_count,
    process_index,
)

__all__ = [
    "InstanceClassifier",
    "Mesh",
    "PEER_ERRORS",
    "batch_layout",
    "build_mesh",
    "configure_virtual_devices",
    "cpu_emulates_bfloat16",
    "initialize_multi_client",
    "is_multi_client",
    "pack_sharded",
    "padded_num_classes",
    "process_count",
    "process_index",
    "replicated_layout",
    "row_sharded_layout",
    "to_numpy",
]
