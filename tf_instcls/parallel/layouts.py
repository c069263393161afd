"""Layouts on the 1-D mesh, and moving arrays onto and off it.

The three layouts of the design: batch-sharded inputs, replicated parameters and
row-sharded classifier weights W [N, D]. Helpers here also tell the loss how a
classifier variable is laid out, so that ``losses/`` never imports DTensor itself.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
from tensorflow.experimental import dtensor

UNSHARDED = dtensor.UNSHARDED


def _axis(mesh: dtensor.Mesh) -> str:
    if len(mesh.dim_names) != 1:
        raise ValueError(f"tf_instcls uses 1-D meshes; got axes {mesh.dim_names}")
    return mesh.dim_names[0]


def replicated_layout(mesh: dtensor.Mesh, rank: int) -> dtensor.Layout:
    """Every device holds the whole tensor (backbone, head, DDP's W)."""
    return dtensor.Layout.replicated(mesh, rank)


def batch_layout(mesh: dtensor.Mesh, rank: int) -> dtensor.Layout:
    """First dimension split over the mesh axis (images, ids, embeddings)."""
    return dtensor.Layout.batch_sharded(mesh, _axis(mesh), rank)


def row_sharded_layout(mesh: dtensor.Mesh, rank: int = 2) -> dtensor.Layout:
    """Rows split over the mesh axis: W [N, D] in the paper's hybrid-parallel scheme."""
    return dtensor.Layout([_axis(mesh)] + [UNSHARDED] * (rank - 1), mesh)


def columns_sharded_layout(mesh: dtensor.Mesh, rank: int = 2) -> dtensor.Layout:
    """Last dimension split over the mesh axis: logits [B, N] against a row-sharded W."""
    return dtensor.Layout([UNSHARDED] * (rank - 1) + [_axis(mesh)], mesh)


def is_dtensor_variable(value) -> bool:
    """True for a ``dtensor.DVariable`` (works inside tf.function, unlike is_dtensor)."""
    return isinstance(value, dtensor.DVariable)


@dataclasses.dataclass(frozen=True)
class ClassWeightPlacement:
    """How W is laid out: the mesh, its axis and the number of row shards S."""

    mesh: dtensor.Mesh | None
    axis: str | None
    row_shards: int

    @property
    def distributed(self) -> bool:
        return self.mesh is not None

    @property
    def sharded(self) -> bool:
        return self.row_shards > 1


def class_weight_placement(class_weights) -> ClassWeightPlacement:
    """Reads the placement of W from its DVariable layout (plain W: no mesh)."""
    if not is_dtensor_variable(class_weights):
        return ClassWeightPlacement(mesh=None, axis=None, row_shards=1)
    layout = class_weights.layout
    mesh = layout.mesh
    if len(mesh.dim_names) != 1:
        raise ValueError(f"class_weights must live on a 1-D mesh; got axes {mesh.dim_names}")
    axis = mesh.dim_names[0]
    specs = layout.sharding_specs
    if len(specs) != 2:
        raise ValueError(f"class_weights must be 2-D [N, D]; layout has rank {len(specs)}")
    if specs[1] != UNSHARDED:
        raise ValueError(
            f"class_weights may be sharded by rows only; got sharding specs {specs}"
        )
    shards = mesh.dim_size(axis) if specs[0] == axis else 1
    return ClassWeightPlacement(mesh=mesh, axis=axis, row_shards=shards)


def relayout(value: tf.Tensor, layout: dtensor.Layout) -> tf.Tensor:
    """States the layout we want at a boundary (DTensor would otherwise pick its own)."""
    return dtensor.relayout(value, layout)


def pad_local_rows(value: tf.Tensor, rows: int) -> tf.Tensor:
    """Each device's rows of a [N, C] tensor laid out like W, zero-padded to ``rows``
    (eager, on the devices themselves: nothing is gathered). A row-sharded [S L, C]
    becomes [S rows, C], still row-sharded; a replicated or plain one [rows, C]."""
    if not dtensor.is_dtensor(value):
        return tf.pad(value, [[0, rows - value.shape[0]], [0, 0]])
    layout = dtensor.fetch_layout(value)
    pieces = [tf.pad(piece, [[0, rows - piece.shape[0]], [0, 0]])
              for piece in dtensor.unpack(value)]
    return dtensor.pack(pieces, layout)


# -- pins: the layouts of the loss's intermediates, stated at each boundary ----------
# (DTensor's layout propagation otherwise picks one, and may all-gather W or the
# logits.)
def pin_columns(value: tf.Tensor, placement: ClassWeightPlacement,
                batch_shards: int = 1) -> tf.Tensor:
    """A rank-2 [rows, N] tensor whose columns follow W's rows: sharded like them (W
    row-sharded), split by rows over ``batch_shards`` > 1 devices (DDP), else replicated."""
    if not placement.distributed:
        return value
    mesh = placement.mesh
    if placement.sharded:
        layout = columns_sharded_layout(mesh, 2)
    elif batch_shards > 1:
        layout = batch_layout(mesh, 2)
    else:
        layout = replicated_layout(mesh, 2)
    return relayout(value, layout)


def pin_batch(value: tf.Tensor, placement: ClassWeightPlacement, batch_shards: int) -> tf.Tensor:
    """Any rank: split over devices by the first axis when ``batch_shards`` > 1 (DDP),
    else replicated."""
    if not placement.distributed:
        return value
    rank = value.shape.rank
    if batch_shards > 1:
        return relayout(value, batch_layout(placement.mesh, rank))
    return relayout(value, replicated_layout(placement.mesh, rank))


def shard_index(placement: ClassWeightPlacement) -> tf.Tensor:
    """Int32 [S] vector 0..S-1 laid out so that device s holds exactly element s."""
    values = tf.range(placement.row_shards, dtype=tf.int32)
    if not placement.sharded:
        return values
    return dtensor.relayout(values, dtensor.Layout([placement.axis], placement.mesh))



def row_index(placement: ClassWeightPlacement, num_rows: int) -> tf.Tensor:
    """Int32 [N] 0..N-1 laid out like W's rows: each device holds its own rows' indices."""
    values = tf.range(num_rows, dtype=tf.int32)
    if not placement.distributed:
        return values
    if not placement.sharded:
        return relayout(values, replicated_layout(placement.mesh, 1))
    return dtensor.relayout(values, dtensor.Layout([placement.axis], placement.mesh))

def gather_rows(value: tf.Tensor, ids: tf.Tensor, placement: ClassWeightPlacement) -> tf.Tensor:
    """value[ids] for a [N, C] tensor laid out like W, without gathering it (tf.function).

    Each device gathers from its own rows of an [S, N/S, C] view (indices taken modulo
    N/S, so non-owners read a wrong row) and masks out the rows it does not own; the
    sum over S (an all-reduce of [B, C]) leaves the owner's row.
    """
    shards = placement.row_shards
    local_rows = value.shape[0] // shards
    if placement.distributed:
        ids = dtensor.relayout(ids, replicated_layout(placement.mesh, 1))
    owner = ids // local_rows
    rows = tf.gather(tf.reshape(value, [shards, local_rows, -1]), ids - owner * local_rows,
                     axis=1)  # [S, B, C], local
    own = tf.equal(tf.reshape(shard_index(placement), [-1, 1]), tf.expand_dims(owner, 0))
    return tf.reduce_sum(tf.where(tf.expand_dims(own, 2), rows, tf.zeros_like(rows)), axis=0)


def replicated_variable(value, mesh: dtensor.Mesh, name: str, dtype=None) -> tf.Variable:
    """A DVariable holding ``value`` (host scalar or array) on every device of ``mesh``."""
    value = tf.constant(value, dtype)
    return dtensor.DVariable(
        dtensor.copy_to_mesh(value, replicated_layout(mesh, value.shape.rank)), name=name
    )


def local_device_shard_ids(mesh: dtensor.Mesh) -> list[int]:
    """Mesh coordinate (shard index) of each local device, in local device order."""
    return [int(i) for i in mesh.local_device_ids()]


def pack_sharded(array, layout: dtensor.Layout) -> tf.Tensor:
    """Builds a DTensor from a host array, handing each local device only its shard.

    Works in multi-client runs: each client packs the shards of its own devices, so
    no device (and no client) receives the full array of a sharded layout.
    """
    array = np.asarray(array)
    mesh = layout.mesh
    axis = _axis(mesh)
    size = mesh.dim_size(axis)
    specs = layout.sharding_specs
    if len(specs) != array.ndim:
        raise ValueError(f"layout rank {len(specs)} != array rank {array.ndim}")
    shards = []
    for shard_id in local_device_shard_ids(mesh):
        piece = array
        for dim, spec in enumerate(specs):
            if spec == axis:
                if array.shape[dim] % size:
                    raise ValueError(
                        f"dimension {dim} of size {array.shape[dim]} is not divisible by "
                        f"the {size} devices of mesh axis '{axis}'"
                    )
                step = array.shape[dim] // size
                piece = np.take(piece, np.arange(shard_id * step, (shard_id + 1) * step), dim)
        shards.append(tf.constant(piece))
    return dtensor.pack(shards, layout)


def to_numpy(value) -> np.ndarray:
    """The global value of a (D)Tensor as a host numpy array.

    Single client: sharded tensors are reassembled from their local shards. In a
    multi-client run a sharded value is first relayouted to replicated (a collective:
    every client must call this together).
    """
    if isinstance(value, tf.Variable) and not is_dtensor_variable(value):
        return value.numpy()
    tensor = tf.convert_to_tensor(value)
    if not dtensor.is_dtensor(tensor):
        return tensor.numpy()
    layout = dtensor.fetch_layout(tensor)
    if layout.is_fully_replicated():
        return dtensor.unpack(tensor)[0].numpy()
    mesh = layout.mesh
    if mesh.num_local_devices() != mesh.size:
        replicated = dtensor.relayout(tensor, replicated_layout(mesh, len(layout.sharding_specs)))
        return dtensor.unpack(replicated)[0].numpy()
    axis = _axis(mesh)
    parts = [t.numpy() for t in dtensor.unpack(tensor)]
    sharded_dims = [d for d, spec in enumerate(layout.sharding_specs) if spec == axis]
    order = np.argsort(local_device_shard_ids(mesh))
    return np.concatenate([parts[i] for i in order], axis=sharded_dims[0])


def local_shapes(layout: dtensor.Layout, global_shape) -> tuple[int, ...]:
    """Per-device shape of a tensor with ``global_shape`` under ``layout``."""
    mesh = layout.mesh
    return tuple(
        dim if spec == UNSHARDED else dim // mesh.dim_size(spec)
        for dim, spec in zip(global_shape, layout.sharding_specs)
    )


def zeros_like_variable(variable: tf.Variable, name: str) -> tf.Variable:
    """A zero variable with ``variable``'s shape, dtype and (for DVariables) layout.

    Sharded variables get sharded zeros built per device: the full tensor never
    exists on one device (this is how W's momentum slot stays sharded like W).
    """
    variable = variable_handle(variable)
    if not is_dtensor_variable(variable):
        return tf.Variable(tf.zeros_like(variable), trainable=False, name=name)
    layout = variable.layout
    local = local_shapes(layout, variable.shape)
    shards = [
        tf.zeros(local, dtype=variable.dtype) for _ in range(layout.mesh.num_local_devices())
    ]
    return dtensor.DVariable(dtensor.pack(shards, layout), trainable=False, name=name)


def pack_local_batch(local_batch, layout: dtensor.Layout) -> tf.Tensor:
    """A batch-sharded DTensor from this process' part of the global batch.

    ``local_batch`` (tensor or array) holds the rows of this client's devices, in local
    device order; it is split evenly over them. Single client: the whole batch.
    """
    local_batch = tf.convert_to_tensor(local_batch)
    count = layout.mesh.num_local_devices()
    if local_batch.shape[0] % count:
        raise ValueError(
            f"local batch of {local_batch.shape[0]} rows does not split over {count} devices"
        )
    return dtensor.pack(tf.split(local_batch, count, axis=0), layout)


def max_over_processes(values, mesh: dtensor.Mesh) -> np.ndarray:
    """The element-wise maximum of each process' ``values`` (a host vector) over every
    process of the run, on the mesh (DTensor's reduction: one all-reduce, nothing
    hand-rolled); in a single-process run, ``values`` itself. Every process must call it
    together, like any collective."""
    values = np.asarray(values, np.float64).reshape(1, -1)
    local = np.repeat(values, mesh.num_local_devices(), axis=0)  # one row per device
    rows = pack_local_batch(local, batch_layout(mesh, 2))
    return to_numpy(tf.reduce_max(rows, axis=0)).astype(np.float64)


def variable_handle(variable):
    """The tf.Variable behind a Keras 3 variable (itself for TF variables)."""
    inner = getattr(variable, "_value", None)
    return inner if isinstance(inner, tf.Variable) else variable


def replicate_model_variables(model, mesh: dtensor.Mesh) -> dict:
    """Makes every variable of a Keras 3 model a replicated DVariable on ``mesh``.

    Keras 3 (3.15, TF backend) creates plain ``tf.Variable``s even under
    ``dtensor.default_mesh``, so the backbone and head would not live on the mesh. Each
    Keras variable keeps its object (layers, paths, trainability) and gets a DVariable
    with the same value as its storage. Returns ``{variable path: DVariable}`` for the
    checkpoint.
    """
    handles = {}
    for variable in model.variables:
        inner = variable_handle(variable)
        if not is_dtensor_variable(inner):
            value = dtensor.copy_to_mesh(
                inner.read_value(), replicated_layout(mesh, len(inner.shape))
            )
            inner = dtensor.DVariable(value, trainable=inner.trainable,
                                      name=inner.name.split(":")[0])
            variable._value = inner
        handles[variable.path] = inner
    return handles


# -- selecting by a scalar flag (the non-finite guard) ---------------------------
def masked(value, keep):
    """``value`` where the scalar bool ``keep`` holds, else exactly 0 (even where
    ``value`` is NaN or Inf). ``tf.where`` with a scalar condition segfaults under
    DTensor (TF 2.21, checked on virtual CPUs), and ``tf.cond`` silently took the wrong
    branch, hence ``multiply_no_nan``."""
    return tf.math.multiply_no_nan(value, tf.cast(keep, value.dtype))


def keep_or_replace(keep, new, old):
    """``new`` if ``keep`` else ``old``, elementwise-safe for a non-finite ``new``."""
    return masked(new, keep) + masked(old, tf.logical_not(keep))
