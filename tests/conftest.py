"""Test setup: 8 virtual CPU devices, configured once before TensorFlow initialises.

Meshes of 1, 2, 4 and 8 devices are built from subsets of them (see DESIGN.md).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

from tf_instcls.parallel import configure_virtual_devices  # noqa: E402

NUM_VIRTUAL_DEVICES = 8
configure_virtual_devices(NUM_VIRTUAL_DEVICES)
