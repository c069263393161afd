"""Hardest negative classes (Liu et al. 2021, Eq. 2): for each row i of W, the k other
rows most cosine-similar to it, most similar first, ties to the lower index. Exact.

Memory is bounded by query blocks: a block of ``block_size`` rows is compared with all
of W at a time, never an N x N matrix. On a row-sharded W every device compares the
block with its own rows only ([bs, N/S] similarities) and keeps its local top k; only
those S * k candidates per query row are gathered for the final top k. W is never
all-gathered: the query rows themselves are fetched with a local gather plus a masked
all-reduce of [bs, D].

The local top k is two-stage and still exact: a row's similarities are cut into groups of
``GROUP`` consecutive columns, the k + 1 groups with the largest maxima are kept (every
element of the row's top k + 1 lies in one of them: k + 1 other groups with larger
maxima would hold k + 1 larger elements), and the top k + 1 of their elements are taken.
One top-k over N / GROUP maxima and one over (k + 1) GROUP candidates replace a top-k
over all N columns, which was ~80% of mining on CPU (``benchmarks/bench_mining.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tf_instcls import parallel
from tf_instcls.losses.cosine_softmax import l2_normalize_rows
from tf_instcls.parallel import layouts, preemption, watchdog


def hardest_negatives(class_weights, k: int, *, block_size: int | None = None,
                      valid_rows: int | None = None, progress: bool = False,
                      group_size: int | None = None) -> np.ndarray:
    """int32 [N, k] table of the k hardest negatives of every row of W.

    Args:
      class_weights: W [N, D]: a tensor / variable, or a ``dtensor.DVariable``
        (row-sharded or replicated) on a 1-D mesh.
      k: negatives per row, 1 <= k < N.
      block_size: query rows per block; bounds memory to about block_size x N / S
        similarities per device. Default: up to 4096, at most ~2 GiB per device.
      valid_rows: rows at or beyond this index are padding: never returned, never
        queried (default: all N rows). The table then has ``valid_rows`` rows.
      group_size: columns per group of the two-stage top k (exact either way). None:
        ``GROUP`` where it pays (each shard at least 4 (k + 2) GROUP rows), else one top k
        over every column; 0: always one top k; > 0: this size wherever it fits.
      progress: show a progress bar over the query blocks. Every block also tells the
        progress watchdog that the run is alive (exact mining is N^2 D work: about an
        hour at N = 1.28M on a 2-core CPU, longer than the step timeout).
    """
    shape = tf.TensorShape(class_weights.shape)
    if shape.rank != 2:
        raise ValueError(f"class_weights must be 2-D [N, D]; got shape {shape}")
    total, _ = shape
    n = total if valid_rows is None else int(valid_rows)
    if not 1 <= n <= total:
        raise ValueError(f"valid_rows must be in [1, {total}]; got {valid_rows}")
    if not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise ValueError(f"k must be an int in [1, N) = [1, {n}); got {k!r}")
    placement = layouts.class_weight_placement(class_weights)
    local_rows = total // placement.row_shards
    if block_size is None:
        # Up to 4096 query rows (large blocks keep the matmul efficient), capped so the
        # [block, N / S] similarities take at most ~2 GiB per device.
        block = int(min(4096, max(256, (2 << 30) // (4 * local_rows))))
    else:
        block = int(block_size)
    if block < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size}")
    if group_size is not None and (not isinstance(group_size, (int, np.integer))
                                   or group_size < 0):
        raise ValueError(f"group_size must be an int >= 0 (0: no groups); got {group_size!r}")
    unit = _normalize(class_weights)  # once, not per block (same layout as W)
    plan = _grouping(total, n, k, local_rows, group_size)
    if plan.grouped and plan.rows > local_rows:
        # each device's rows padded to whole groups, once per pass and where they are
        # (padding inside the block function made DTensor replicate W's copy)
        unit = layouts.pad_local_rows(unit, plan.rows)
    block_fn = _make_block_fn(placement, total, n, k, local_rows, plan)
    out = np.empty((n, k), np.int32)
    bar = tf.keras.utils.Progbar(-(-n // block), verbose=1 if progress else 0,
                                 unit_name="block")
    for start in range(0, n, block):
        stop = min(start + block, n)
        ids = np.arange(start, stop, dtype=np.int32)
        ids = np.pad(ids, (0, block - len(ids)), constant_values=start)  # static shapes
        if placement.distributed:
            ids_t = parallel.pack_sharded(ids, layouts.replicated_layout(placement.mesh, 1))
        else:
            ids_t = tf.constant(ids)
        out[start:stop] = parallel.to_numpy(block_fn(unit, ids_t))[: stop - start]
        watchdog.beat()
        bar.add(1)
        # a run's SIGTERM: give up (StopRequested); the table is assigned only whole
        preemption.check(placement.mesh if placement.distributed else None)
    return out


@tf.function
def _normalize(class_weights):
    return l2_normalize_rows(tf.convert_to_tensor(class_weights))  # [N, D], the loss's op


_BLOCK_FNS: dict = {}  # one traced function per (mesh, layout, sizes): not one per epoch
GROUP = 64  # columns per group of the two-stage top k; 0: one top k over every column


@dataclasses.dataclass(frozen=True)
class _Grouping:
    """How a pass selects its top k: ``grouped`` (two stages, groups of ``group``
    columns, each shard's rows padded to ``rows``; ``partial``: some group mixes real and
    padding columns, so ``keep`` = k + 2 groups) or one top k over every column."""

    grouped: bool
    group: int
    rows: int
    keep: int
    partial: bool


def _grouping(total, n, k, local_rows, group_size) -> _Grouping:
    padded = n < total
    group = GROUP if group_size is None else group_size
    rows = -(-local_rows // group) * group if group else local_rows
    partial = padded or rows > local_rows
    keep = k + 1 + int(partial)
    grouped = bool(group) and keep < rows // group and (
        group_size is not None or 4 * keep * group <= rows)
    return _Grouping(grouped, group, rows if grouped else local_rows, keep, partial)


def _make_block_fn(placement, total, n, k, local_rows, plan):
    # the mesh by its description: a variable's layout hands out a new Mesh object
    mesh = placement.mesh.to_string() if placement.mesh is not None else None
    key = (mesh, placement.sharded, placement.distributed, placement.row_shards, total, n,
           k, local_rows, plan)
    if key not in _BLOCK_FNS:
        _BLOCK_FNS[key] = _build_block_fn(placement, total, n, k, local_rows, plan)
    return _BLOCK_FNS[key]


def _build_block_fn(placement, total, n, k, local_rows, plan):
    shards = placement.row_shards
    # k + 1 per shard: the row itself is among them (cosine 1) and is dropped at the end;
    # this avoids a broadcast mask over [bs, N], a slow pass on CPU.
    take = min(k + 1, local_rows)
    padded = n < total
    group, grouped_rows, keep, partial = plan.group, plan.rows, plan.keep, plan.partial
    num_groups = grouped_rows // group if plan.grouped else 0

    def _padded_ids(ids):
        """Row ids of W -> rows of the padded copy (the owner shard, the same local row)."""
        if grouped_rows == local_rows:
            return ids
        return ids // local_rows * grouped_rows + ids % local_rows

    def local_top(sims, shard_ids):
        """[bs, S, L] similarities -> top ``take`` values and local columns per shard."""
        if padded:  # padding rows (zero vectors, cosine 0) must never be chosen
            columns = (tf.reshape(shard_ids, [1, -1, 1]) * local_rows
                       + tf.reshape(tf.range(local_rows), [1, 1, -1]))  # [1, S, L] global
            sims = tf.where(columns >= n, -np.inf, sims)
        return tf.math.top_k(sims, k=take)  # [bs, S, take], lower index first

    def grouped_top(sims, shard_ids):
        """The same from [bs, S, L'] (L' whole groups) by way of the groups' maxima."""
        groups = tf.reshape(sims, [-1, shards, num_groups, group])
        maxima = tf.reduce_max(groups, axis=3)  # [bs, S, G]
        first = tf.range(num_groups) * group  # a group's first local column
        if partial:  # groups of padding only never count
            first_global = tf.reshape(shard_ids, [1, -1, 1]) * local_rows + first
            dead = (first >= local_rows) | (first_global >= n)
            maxima = tf.where(dead, -np.inf, maxima)
        _, best = tf.math.top_k(maxima, k=keep)  # [bs, S, keep]
        best = tf.sort(best, axis=2)  # column order: top_k's ties still go to the lower one
        candidates = tf.gather(groups, best, batch_dims=2)  # [bs, S, keep, group]
        columns = tf.expand_dims(best * group, 3) + tf.range(group)  # local columns
        candidates = tf.reshape(candidates, [-1, shards, keep * group])
        columns = tf.reshape(columns, [-1, shards, keep * group])
        if partial:
            global_columns = tf.reshape(shard_ids, [1, -1, 1]) * local_rows + columns
            candidates = tf.where((columns >= local_rows) | (global_columns >= n), -np.inf,
                                  candidates)
        values, position = tf.math.top_k(candidates, k=take)
        return values, tf.gather(columns, position, batch_dims=2)

    @tf.function
    def block_fn(unit, query_ids):  # unit W [N, D]; [bs] int32, replicated
        shard_ids = layouts.shard_index(placement)  # [S]
        # unit: [S L', D] when grouped (each shard's rows padded), else [N, D]
        queries = layouts.gather_rows(unit, _padded_ids(query_ids), placement)  # [bs, D]
        sims = tf.matmul(queries, unit, transpose_b=True)  # [bs, S L'], W not gathered
        if placement.sharded:
            sims = layouts.relayout(sims, layouts.columns_sharded_layout(placement.mesh, 2))
        if plan.grouped:
            sims = tf.reshape(sims, [-1, shards, grouped_rows])  # [bs, S, L'], local
            values, local_index = grouped_top(sims, shard_ids)
        else:
            sims = tf.reshape(sims, [-1, shards, local_rows])  # [bs, S, L], local
            values, local_index = local_top(sims, shard_ids)
        global_index = local_index + tf.reshape(shard_ids, [1, -1, 1]) * local_rows
        if placement.distributed:
            rep = layouts.replicated_layout(placement.mesh, 3)
            values = layouts.relayout(values, rep)  # the S * take candidates: small
            global_index = layouts.relayout(global_index, rep)
        # Candidates are ordered by shard, then by local rank: among equal values the
        # lower global index comes first, and top_k keeps that order.
        values = tf.reshape(values, [-1, shards * take])
        global_index = tf.reshape(global_index, [-1, shards * take])
        _, best = tf.math.top_k(values, k=k + 1)
        found = tf.gather(global_index, best, batch_dims=1)  # [bs, k + 1]
        # Drop the row itself (wherever its ties put it); else drop the (k+1)-th entry.
        is_self = tf.equal(found, tf.expand_dims(query_ids, 1))
        drop = tf.where(tf.reduce_any(is_self, axis=1),
                        tf.argmax(tf.cast(is_self, tf.int32), axis=1, output_type=tf.int32), k)
        positions = tf.expand_dims(tf.range(k), 0)  # [1, k]; static shapes for DTensor
        positions += tf.cast(positions >= tf.expand_dims(drop, 1), tf.int32)
        return tf.gather(found, positions, batch_dims=1)  # [bs, k]

    return block_fn
