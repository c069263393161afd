"""Building the one 1-D DTensor mesh the whole system runs on.

Three ways to get devices:
- the real local accelerators (GPUs if any, else the CPU),
- T virtual CPU devices for development (must be configured before TensorFlow
  initialises its runtime: call :func:`configure_virtual_devices` first thing),
- several processes/hosts through DTensor multi-client (``DTENSOR_*`` environment,
  then :func:`initialize_multi_client`).
"""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow.experimental import dtensor

Mesh = dtensor.Mesh  # the mesh type, for annotations outside this package
# What a collective (or a checkpoint save) raises when another process of a multi-client
# run died or became unreachable: a lost peer, not a problem of this process.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
               tf.errors.DeadlineExceededError, tf.errors.CancelledError)

DEFAULT_AXIS = "batch"
_MULTI_CLIENT_ENV = ("DTENSOR_CLIENT_ID", "DTENSOR_NUM_CLIENTS", "DTENSOR_JOBS")


def configure_virtual_devices(count: int, device_type: str = "CPU") -> None:
    """Splits the first physical ``device_type`` device into ``count`` logical ones.

    Must run before TensorFlow initialises its runtime (before any op runs). Calling
    it again with the same count is a no-op; a different count after initialisation
    raises a clear error instead of TensorFlow's generic one.
    """
    if count < 1:
        raise ValueError(f"virtual device count must be >= 1, got {count}")
    physical = tf.config.list_physical_devices(device_type)
    if not physical:
        raise ValueError(f"no physical {device_type} device to split into virtual devices")
    current = tf.config.get_logical_device_configuration(physical[0])
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            physical[0], [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError as err:
        have = len(tf.config.list_logical_devices(device_type))
        raise RuntimeError(
            f"cannot configure {count} virtual {device_type} devices: TensorFlow is "
            f"already initialised with {have}. Configure virtual devices before any "
            "TensorFlow op runs (e.g. first thing in main() or in tests/conftest.py)."
        ) from err


def default_device_type() -> str:
    """``"GPU"`` when a GPU is visible, else ``"CPU"``."""
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"


def cpu_emulates_bfloat16() -> bool:
    """True when this CPU has no native bfloat16 (neither avx512_bf16 nor amx_bf16 in
    /proc/cpuinfo): its bfloat16 convolutions are emulated, and a bfloat16 encoder step
    is many times slower than a float32 one (6 x with TensorFlow's own kernels, 12 x
    with oneDNN's, on a 2-core AMD EPYC). False when unknown (no /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" not in flags and "amx_bf16" not in flags


def is_multi_client() -> bool:
    """True when the DTENSOR_* environment describes more than one client."""
    return int(os.environ.get("DTENSOR_NUM_CLIENTS", "1")) > 1


def process_index() -> int:
    """This client's index in a multi-client run (0 otherwise)."""
    return dtensor.client_id() if is_multi_client() else 0


def process_count() -> int:
    """The number of clients (1 unless multi-client)."""
    return dtensor.num_clients() if is_multi_client() else 1


def initialize_multi_client(device_type: str | None = None) -> None:
    """Starts DTensor's accelerator system for a multi-client (multi-process) run.

    Reads ``DTENSOR_CLIENT_ID``, ``DTENSOR_NUM_CLIENTS``, ``DTENSOR_JOB_NAME`` and
    ``DTENSOR_JOBS`` (``host:port`` per client, comma separated). Local virtual devices,
    if any, must be configured before this call.
    """
    missing = [name for name in _MULTI_CLIENT_ENV if name not in os.environ]
    if missing:
        raise ValueError(
            "multi-client DTensor needs the environment variables "
            f"{', '.join(_MULTI_CLIENT_ENV)}; missing: {', '.join(missing)}"
        )
    num_clients = int(os.environ["DTENSOR_NUM_CLIENTS"])
    client_id = int(os.environ["DTENSOR_CLIENT_ID"])
    jobs = os.environ["DTENSOR_JOBS"].split(",")
    if len(jobs) != num_clients:
        raise ValueError(
            f"DTENSOR_JOBS lists {len(jobs)} addresses but DTENSOR_NUM_CLIENTS={num_clients}"
        )
    if not 0 <= client_id < num_clients:
        raise ValueError(f"DTENSOR_CLIENT_ID={client_id} outside [0, {num_clients})")
    os.environ.setdefault("DTENSOR_JOB_NAME", "worker")
    dtensor.initialize_accelerator_system(device_type or default_device_type())


def build_mesh(
    num_devices: int | None = None,
    *,
    device_type: str | None = None,
    axis_name: str = DEFAULT_AXIS,
) -> dtensor.Mesh:
    """A 1-D mesh named ``axis_name``.

    Single client: over the first ``num_devices`` local devices of ``device_type``
    (all of them when None). Multi-client (after :func:`initialize_multi_client`):
    over every device of every client; ``num_devices`` must then be None or the
    global device count.
    """
    device_type = device_type or default_device_type()
    if is_multi_client():
        total = dtensor.num_global_devices(device_type)
        if num_devices not in (None, total):
            raise ValueError(
                f"a multi-client mesh spans all {total} global {device_type} devices; "
                f"got num_devices={num_devices}"
            )
        return dtensor.create_distributed_mesh(
            [(axis_name, total)], device_type=device_type
        )
    available = len(tf.config.list_logical_devices(device_type))
    count = available if num_devices is None else num_devices
    if not 1 <= count <= available:
        raise ValueError(
            f"asked for a mesh of {count} {device_type} devices but {available} are "
            "available (use configure_virtual_devices for more CPU devices)"
        )
    devices = [f"{device_type}:{i}" for i in range(count)]
    return dtensor.create_mesh([(axis_name, count)], devices=devices, device_type=device_type)
