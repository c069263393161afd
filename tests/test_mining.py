"""hardest_negatives against a float64 numpy brute force, on plain and sharded W."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.experimental import dtensor

from tf_instcls import parallel
from tf_instcls.mining import hardest_negatives


def brute_force(w, k, valid=None):
    """k most cosine-similar other rows, most similar first, ties to the lower index."""
    w = np.asarray(w, np.float64)[: valid or len(w)]
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    # lexsort: last key is primary -> sort by -similarity, then by index
    order = np.array([np.lexsort((np.arange(len(row)), -row))[:k] for row in sims])
    return order.astype(np.int32), sims


def _check(got, w, k, valid=None):
    want, sims = brute_force(w, k, valid)
    assert got.shape == want.shape and got.dtype == np.int32
    mismatch = got != want
    if mismatch.any():  # allowed only between float32-indistinguishable similarities
        rows = np.nonzero(mismatch)[0]
        for r in rows:
            np.testing.assert_allclose(np.sort(sims[r, got[r]]), np.sort(sims[r, want[r]]),
                                       atol=1e-6)
    assert not (got == np.arange(len(got))[:, None]).any(), "a row is its own negative"


def _sharded(w, devices, layout="sharded"):
    mesh = parallel.build_mesh(devices)
    n = len(w)
    shards = devices if layout == "sharded" else 1
    total = parallel.padded_num_classes(n, shards)
    padded = np.zeros((total, w.shape[1]), np.float32)
    padded[:n] = w
    lay = (parallel.row_sharded_layout(mesh) if layout == "sharded"
           else parallel.replicated_layout(mesh, 2))
    return dtensor.DVariable(parallel.pack_sharded(padded, lay)), n


@pytest.mark.parametrize("k,block", [(1, 7), (5, 16), (40, 1024)])
def test_plain_matches_brute_force(k, block):
    w = np.random.default_rng(k).normal(size=(61, 8)).astype(np.float32)
    _check(hardest_negatives(tf.constant(w), k, block_size=block), w, k)


@pytest.mark.parametrize("devices", [1, 4])
@pytest.mark.parametrize("layout", ["sharded", "replicated"])
@pytest.mark.parametrize("k", [1, 6, 40])
def test_mesh_matches_brute_force_with_padding(devices, layout, k):
    w = np.random.default_rng(devices + k).normal(size=(61, 8)).astype(np.float32)
    variable, n = _sharded(w, devices, layout)  # 61 rows -> 64 on 4 devices
    got = hardest_negatives(variable, k, block_size=16, valid_rows=n)
    _check(got, w, k)
    assert got.max() < n, "padding rows are never negatives"


@pytest.mark.parametrize("devices,layout", [(1, "sharded"), (4, "sharded"), (4, "replicated")])
@pytest.mark.parametrize("group", [2, 3, 7])
@pytest.mark.parametrize("k", [1, 6, 20])
def test_two_stage_top_k_matches_brute_force(devices, layout, group, k):
    """Groups of 2, 3 or 7 columns: whole, partial (padding inside a group) and padding
    rows (203 -> 204 on 4 devices; 51 rows a shard, not a multiple of 2 or 7)."""
    w = np.random.default_rng(group + k).normal(size=(203, 8)).astype(np.float32)
    variable, n = _sharded(w, devices, layout)
    got = hardest_negatives(variable, k, block_size=64, valid_rows=n, group_size=group)
    _check(got, w, k)
    plain = hardest_negatives(variable, k, block_size=64, valid_rows=n, group_size=0)
    np.testing.assert_array_equal(got, plain)


@pytest.mark.parametrize("group", [2, 5])
def test_duplicate_rows_tie_to_the_lower_index_in_groups_too(group):
    """Exact duplicates (cosine 1 in float32 too) across group and shard boundaries:
    the grouped selection returns the plain top k's table, ties to the lower index."""
    base = np.random.default_rng(5).normal(size=(40, 6)).astype(np.float32)
    w = np.concatenate([base, base[:4], base[10:20], base[:4]])  # exact duplicates
    variable, n = _sharded(w, 4)
    got = hardest_negatives(variable, 12, block_size=16, valid_rows=n, group_size=group)
    assert got[0, :2].tolist() == [40, 54]  # row 0's duplicates, lower index first
    assert got[54, :2].tolist() == [0, 40]
    plain = hardest_negatives(variable, 12, block_size=16, valid_rows=n, group_size=0)
    np.testing.assert_array_equal(got, plain)
    _check(got, w, 12)


def test_duplicate_rows_tie_to_the_lower_index():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(10, 6)).astype(np.float32)
    w = np.concatenate([base, base[:4], base[:4] * 3.0])  # exact (cosine) duplicates
    variable, n = _sharded(w, 4)
    got = hardest_negatives(variable, 3, block_size=5, valid_rows=n)
    # Row 0 has duplicates 10 and 14 (cosine 1): they come first, lower index first.
    assert got[0, :2].tolist() == [10, 14]
    assert got[10, :2].tolist() == [0, 14] and got[14, :2].tolist() == [0, 10]
    _check(got, w, 3)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(k=0), r"k must be an int in \[1, N\)"),
    (dict(k=61), r"k must be an int in \[1, N\)"),
    (dict(k=3, block_size=0), "block_size must be >= 1"),
    (dict(k=3, valid_rows=99), "valid_rows must be in"),
])
def test_bad_input(kwargs, pattern):
    w = tf.ones([61, 4])
    with pytest.raises(ValueError, match=pattern):
        hardest_negatives(w, **kwargs)
    with pytest.raises(ValueError, match="must be 2-D"):
        hardest_negatives(tf.ones([4]), 1)


@pytest.mark.parametrize("devices,layout", [(4, "sharded"), (4, "replicated"), (1, "sharded")])
def test_table_lookup_by_batch_ids_equals_numpy_indexing(devices, layout):
    mesh = parallel.build_mesh(devices)
    clf = parallel.InstanceClassifier(13, 4, mesh=mesh, layout=layout)
    table = np.random.default_rng(0).integers(0, 13, (13, 5)).astype(np.int32)
    variable = clf.build_table(5)
    clf.assign_table(variable, table)
    ids = np.array([12, 0, 5, 5, 7, 1, 11, 3], np.int32)

    @tf.function
    def lookup(ids):
        return clf.lookup_rows(variable, ids)

    got = parallel.to_numpy(lookup(parallel.pack_sharded(ids, parallel.batch_layout(mesh, 1))))
    np.testing.assert_array_equal(got, table[ids])
    if layout == "sharded" and devices > 1:
        local = [s.shape.as_list() for s in dtensor.unpack(variable.read_value())]
        assert local == [[4, 5]] * devices  # the table is sharded like W


def test_mining_every_epoch_traces_its_function_once():
    """The miner runs before every epoch: the same mesh and sizes reuse one traced
    function (DTensor re-expanded a new one per epoch before), and the result still
    follows W as it changes."""
    from tf_instcls.mining import hardest
    from tf_instcls.parallel import layouts

    rng = np.random.default_rng(7)
    w = rng.normal(size=(61, 8)).astype(np.float32)
    variable, n = _sharded(w, 4)
    for epoch in range(3):  # W changes between epochs, as in training
        if epoch:
            w = w + 0.5 * rng.normal(size=w.shape).astype(np.float32)
            padded = np.zeros(variable.shape, np.float32)
            padded[:n] = w
            variable.assign(parallel.pack_sharded(padded, variable.layout))
        _check(hardest_negatives(variable, 6, block_size=16, valid_rows=n), w, 6)
    placement = layouts.class_weight_placement(variable)
    plan = hardest._grouping(64, n, 6, 16, None)
    block_fn = hardest._make_block_fn(placement, 64, n, 6, 16, plan)
    assert block_fn.experimental_get_tracing_count() == 1


def test_mining_tells_the_watchdog_after_every_block(monkeypatch):
    """Exact mining at large N outlasts the step timeout: each query block is progress."""
    from tf_instcls.parallel import watchdog

    beats = []
    monkeypatch.setattr(watchdog, "beat", lambda: beats.append(1))
    w = np.random.default_rng(3).normal(size=(61, 8)).astype(np.float32)
    _check(hardest_negatives(tf.constant(w), 5, block_size=16), w, 5)
    assert len(beats) == 4  # ceil(61 / 16) blocks


@pytest.mark.slow
def test_bench_mining_times_group_sizes_and_they_agree(tmp_path):
    """benchmarks/bench_mining.py (faiss optional): every group size returns the same table."""
    import json
    import os
    import subprocess
    import sys

    from helpers import subprocess_env

    root = os.path.dirname(os.path.dirname(__file__))
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_mining.py"),
                    "--num_instances=3000", "--dim=8", "--k=10", "--repeats=1",
                    "--group_sizes=default,0,3", "--faiss=false", f"--json={out}"],
                   check=True, env=subprocess_env(), capture_output=True)
    result = json.loads(out.read_text())
    assert result["tables_equal_to_first"] == {"0": True, "3": True}
    assert set(result["group_sizes"]) == {"default", "0", "3"}
