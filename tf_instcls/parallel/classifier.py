"""InstanceClassifier: the N-way cosine classifier W [N, D], one row per training image."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from tensorflow.experimental import dtensor

from tf_instcls import defaults
from tf_instcls.parallel import layouts
from tf_instcls.rows import unit_rows

LAYOUTS = ("sharded", "replicated")
_INIT_BLOCK = 4096  # rows drawn per RNG block: W's values do not depend on the device count


def padded_num_classes(num_classes: int, num_shards: int) -> int:
    """Smallest multiple of ``num_shards`` >= ``num_classes`` (DTensor needs divisibility)."""
    return int(math.ceil(num_classes / num_shards) * num_shards)


def gaussian_rows(start: int, stop: int, dim: int, *, seed: int, stddev: float) -> np.ndarray:
    """Rows [start, stop) of a seeded N(0, stddev^2) matrix, independent of sharding."""
    out = np.empty((stop - start, dim), np.float32)
    block = start // _INIT_BLOCK
    while block * _INIT_BLOCK < stop:
        lo = block * _INIT_BLOCK
        rng = np.random.default_rng([seed, block])
        values = rng.standard_normal((_INIT_BLOCK, dim), dtype=np.float32) * stddev
        a, b = max(lo, start), min(lo + _INIT_BLOCK, stop)
        out[a - start : b - start] = values[a - lo : b - lo]
        block += 1
    return out


class InstanceClassifier(keras.layers.Layer):
    """Cosine-softmax classifier over all N instances, W held as a DTensor DVariable.

    Args:
      num_instances: N, the number of training images (= classes).
      dim: D, the embedding dimension (128 in the paper).
      mesh: a 1-D ``dtensor.Mesh``; None keeps W as a plain single-device variable.
      layout: ``"sharded"`` (DHP, the paper: rows of W split over the mesh devices) or
        ``"replicated"`` (DDP baseline: every device holds all of W).
      temperature: tau of the cosine softmax (0.15 in the paper).
      chunk_size: optional row chunking of the loss (bounds logits memory).
      init_stddev: stddev of the Gaussian initial W; default 1/sqrt(D), so rows have
        norm ~1 like the normalised embeddings. (The loss normalises W, so a larger scale
        only shrinks the effective learning rate of W: with stddev 1 and D = 128 the rows
        hardly turned.) The contrastive prior, when used, overwrites W before training.
      seed: RNG seed of the initial W; values do not depend on the device count.
      unit_norm_rows: keep every row of W at unit norm: rows given to
        :meth:`assign_rows` are normalised, and the optimizer applies
        :meth:`project_rows` after each update. The loss sees only directions, so this
        changes no logit; it fixes the scale of W's steps. A row's direction turns by
        about lr * |g| / |w|, and its gradient is a 1/(2B) share of the batch loss, so a
        row whose norm grows (the prior's rows start at ~10 here; orthogonal steps add
        norm) stops following the features. Off by default (the paper's W).

    W is padded to a multiple of the shard count with zero rows that every softmax
    ignores; ``num_instances`` is the number of real rows.
    """

    def __init__(
        self,
        num_instances: int,
        dim: int = defaults.EMBEDDING_DIM,
        *,
        mesh: dtensor.Mesh | None = None,
        layout: str = "sharded",
        temperature: float = defaults.TEMPERATURE,
        chunk_size: int | None = None,
        init_stddev: float | None = None,
        seed: int = 0,
        unit_norm_rows: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
        if num_instances < 2:
            raise ValueError(f"num_instances must be >= 2; got {num_instances}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1; got {dim}")
        self.num_instances = int(num_instances)
        self.dim = int(dim)
        self.mesh = mesh
        self.weight_layout = layout
        self.temperature = float(temperature)
        self.chunk_size = chunk_size
        self.init_stddev = float(init_stddev) if init_stddev else 1.0 / math.sqrt(dim)
        self.seed = int(seed)
        self.unit_norm_rows = bool(unit_norm_rows)
        shards = mesh.size if (mesh is not None and layout == "sharded") else 1
        self.num_shards = shards
        self.num_padded = padded_num_classes(self.num_instances, shards)
        self._class_weights = None

    # -- weights -----------------------------------------------------------------
    def build(self, input_shape=None):
        if self._class_weights is not None:
            return
        if self.mesh is None:
            init = self._initial_rows(0, self.num_padded)
            self._class_weights = tf.Variable(init, name="class_weights")
        else:
            layout = self.variable_layout()
            local_rows = self.num_padded // self.num_shards
            shards = []
            for shard_id in layouts.local_device_shard_ids(self.mesh):
                start = shard_id * local_rows if self.num_shards > 1 else 0
                shards.append(tf.constant(self._initial_rows(start, start + local_rows)))
            self._class_weights = dtensor.DVariable(
                dtensor.pack(shards, layout), name="class_weights"
            )
        super().build(input_shape)

    def _initial_rows(self, start: int, stop: int) -> np.ndarray:
        rows = np.zeros((stop - start, self.dim), np.float32)
        real = min(stop, self.num_instances)
        if real > start:
            rows[: real - start] = gaussian_rows(
                start, real, self.dim, seed=self.seed, stddev=self.init_stddev
            )
            if self.unit_norm_rows:
                rows = unit_rows(rows)
        return rows

    def variable_layout(self) -> dtensor.Layout | None:
        if self.mesh is None:
            return None
        if self.weight_layout == "sharded":
            return layouts.row_sharded_layout(self.mesh)
        return layouts.replicated_layout(self.mesh, 2)

    @property
    def class_weights(self) -> tf.Variable:
        """W [num_padded, D]: a DVariable on the mesh (or a plain variable)."""
        if self._class_weights is None:
            self.build()
        return self._class_weights

    def assign_rows(self, rows: np.ndarray) -> None:
        """Sets W[:N] = rows (host array [N, D]); padded rows stay zero.

        Each device receives only its own rows (``dtensor.pack`` of local shards): a
        sharded W is never materialised whole on a device.
        """
        if self.unit_norm_rows:
            rows = unit_rows(np.asarray(rows, np.float32))
        self.assign_padded(self.class_weights, rows, np.float32, "assign_rows")

    def project_rows(self, w):
        """W's value with every row put back on the unit sphere (the optimizer's
        projection when ``unit_norm_rows``). Rows are local to their shard, so no
        communication; the zero padding rows stay zero."""
        return tf.math.l2_normalize(w, axis=-1)

    def build_table(self, columns: int) -> tf.Variable:
        """An int32 [num_padded, columns] DVariable laid out like W (the hard negatives)."""
        if self.mesh is None:
            return tf.Variable(tf.zeros([self.num_padded, columns], tf.int32), trainable=False,
                               name="hard_negatives")
        local = self.num_padded // self.num_shards
        shards = [tf.zeros([local, columns], tf.int32)
                  for _ in range(self.mesh.num_local_devices())]
        layout = self.variable_layout()
        return dtensor.DVariable(dtensor.pack(shards, layout), trainable=False,
                                 name="hard_negatives")

    def assign_table(self, table_variable: tf.Variable, table: np.ndarray) -> None:
        """Writes a host [N, columns] int table into a variable from build_table."""
        self.assign_padded(table_variable, table, np.int32, "assign_table")

    def assign_padded(self, variable, values, dtype, what: str) -> None:
        """variable[:N] = values, padding rows zero, each device given only its rows."""
        values = np.asarray(values, dtype)
        columns = variable.shape[1]
        if values.shape != (self.num_instances, columns):
            raise ValueError(f"{what} needs [{self.num_instances}, {columns}]; got {values.shape}")
        padded = np.zeros((self.num_padded, columns), dtype)
        padded[: self.num_instances] = values
        if self.mesh is None:
            variable.assign(padded)
        else:
            variable.assign(layouts.pack_sharded(padded, self.variable_layout()))

    def lookup_rows(self, table_variable, ids):
        """table[ids] ([B, columns]) without gathering a sharded table (inside tf.function)."""
        placement = layouts.class_weight_placement(table_variable)
        return layouts.gather_rows(tf.convert_to_tensor(table_variable), ids, placement)

    @property
    def distributed_variables(self) -> list[tf.Variable]:
        """W, for the optimizer (it creates W's slots with W's own layout)."""
        return [self.class_weights]

    def get_config(self):
        config = super().get_config()
        config.update(
            num_instances=self.num_instances,
            dim=self.dim,
            layout=self.weight_layout,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
            init_stddev=self.init_stddev,
            seed=self.seed,
            unit_norm_rows=self.unit_norm_rows,
        )
        return config
