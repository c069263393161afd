"""A batch in chunks of rows, for losses whose per-row buffers are [c, N]: a grid view
and a strictly sequential loop over it.

The chunks run in a ``tf.while_loop`` with ``parallel_iterations=1``, so exactly one
chunk's buffers are alive at a time. (An unrolled Python loop serialised with control
dependencies is not enough: DTensor's MLIR passes drop control edges between stateless
ops, and the executor then ran several chunks, and the forward and the backward pass, at
once: 2.0 x less memory than unchunked instead of 4 x.)
"""

from __future__ import annotations

import tensorflow as tf

from tf_instcls.parallel import layouts


class ChunkGrid:
    """[B, ...] viewed as [P, n, c, ...]: each of the P batch shards' rows (P = 1 unless
    the batch is split over devices, as DDP does), padded to n chunks of c rows.

    ``chunk_size`` is the requested rows per chunk over the whole batch (None: one chunk).
    """

    def __init__(self, placement, batch_shards: int, batch: int, chunk_size: int | None):
        self.placement = placement
        self.batch_shards = batch_shards
        self.batch = batch
        per_shard = batch // batch_shards
        if chunk_size is None:
            self.chunk = per_shard
        else:
            self.chunk = max(1, min(per_shard, chunk_size // batch_shards))
        self.num_chunks = -(-per_shard // self.chunk)

    def pin(self, grid):
        """Grids are split over devices by their first axis for DDP, else replicated."""
        return layouts.pin_batch(grid, self.placement, self.batch_shards)

    def grid(self, value, fill=0):
        """[B, ...] -> [P, n, c, ...]: each device's rows, padded to n chunks of c."""
        p, n, c = self.batch_shards, self.num_chunks, self.chunk
        tail = list(value.shape[1:])
        # Every intermediate is pinned: DTensor's layout propagation otherwise shards the
        # padded [P, n * c] axis, which need not divide the mesh.
        grid = self.pin(tf.reshape(value, [p, -1, *tail]))
        pad = n * c - grid.shape[1]
        if pad:
            grid = self.pin(tf.pad(grid, [[0, 0], [0, pad]] + [[0, 0]] * len(tail),
                                   constant_values=tf.cast(fill, value.dtype)))
        return self.pin(tf.reshape(grid, [p, n, c, *tail]))

    def ungrid(self, grid):
        """Inverse of :meth:`grid`: [P, n, c, ...] -> [B, ...] (padding dropped)."""
        p, tail = self.batch_shards, list(grid.shape[3:])
        rows = self.batch // p
        flat = self.pin(tf.reshape(grid, [p, -1, *tail]))
        if flat.shape[1] != rows:
            flat = self.pin(
                tf.slice(flat, [0, 0] + [0] * len(tail), [p, rows] + [-1] * len(tail))
            )
        return tf.reshape(flat, [self.batch, *tail])

    def take(self, grid, i):
        """Chunk i of a grid as [P * c, ...]."""
        part = tf.gather(grid, i, axis=1)  # [P, c, ...]
        return tf.reshape(part, [-1, *grid.shape[3:]])

    def put(self, grid, i, value):
        """The grid with chunk i replaced by ``value`` ([P * c, ...])."""
        p, n, c = self.batch_shards, self.num_chunks, self.chunk
        tail = list(grid.shape[3:])
        value = tf.reshape(value, [p, 1, c, *tail])
        here = tf.reshape(tf.equal(tf.range(n), i), [1, n, 1] + [1] * len(tail))
        return self.pin(tf.where(here, value, grid))

    def loop(self, body, loop_vars):
        """``body(i, *loop_vars) -> [i + 1, *new_vars]`` for i = 0..n-1, one at a time."""
        n = self.num_chunks
        return tf.while_loop(
            lambda i, *_: i < n, body, [tf.constant(0), *loop_vars],
            parallel_iterations=1, maximum_iterations=n,
        )[1:]
