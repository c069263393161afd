r"""Times hardest_negatives against faiss' exact inner-product search, in the same run.

faiss: IndexFlatIP on L2-normalised W, search k + 1 neighbours, self removed. Both
tables are compared (an entry may differ only between float32-equal similarities).
Optionally also reports mining's share of an epoch from a training run's log.

  python benchmarks/bench_mining.py --num_instances=100000 --dim=128 --k=100 \
      --json=runs/bench/mining_n100000.json
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_instances", 100000, "N rows of W.", lower_bound=2)
flags.DEFINE_integer("dim", 128, "D.", lower_bound=1)
flags.DEFINE_integer("k", 100, "Hard negatives per row.", lower_bound=1)
flags.DEFINE_integer("block_size", None, "Query rows per block (default: the library's).",
                     lower_bound=1)
flags.DEFINE_integer("virtual_devices", 1, "T virtual CPU devices (W row-sharded over them); "
                     "1 = plain single-device W.", lower_bound=1)
flags.DEFINE_integer("repeats", 2, "Timed repetitions (best is reported).", lower_bound=1)
flags.DEFINE_list("group_sizes", ["default"], "hardest_negatives group_size values to time, "
                  "interleaved in each repetition: 'default' (the library's choice), 0 (one "
                  "top k over every column) or a group size. The first is compared with "
                  "faiss; the others must return the same table.")
flags.DEFINE_bool("faiss", True, "Also time faiss IndexFlatIP (the `bench` extra).")
flags.DEFINE_string("train_log", None, "A run's model_dir: also report mining's share of "
                    "its epoch time (mining_seconds / train_seconds in metrics.jsonl).")
flags.DEFINE_string("json", None, "Write the result here.")


def main(argv):
    del argv
    from tf_instcls import parallel

    if FLAGS.virtual_devices > 1:
        parallel.configure_virtual_devices(FLAGS.virtual_devices)
    import numpy as np
    import tensorflow as tf
    from tensorflow.experimental import dtensor

    from tf_instcls.mining import hardest_negatives

    n, d, k = FLAGS.num_instances, FLAGS.dim, FLAGS.k
    w = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    if FLAGS.virtual_devices > 1:
        mesh = parallel.build_mesh(FLAGS.virtual_devices)
        total = parallel.padded_num_classes(n, mesh.size)
        padded = np.zeros((total, d), np.float32)
        padded[:n] = w
        layout = parallel.row_sharded_layout(mesh)
        weights = dtensor.DVariable(parallel.pack_sharded(padded, layout))
    else:
        weights = tf.constant(w)

    groups = [None if g == "default" else int(g) for g in FLAGS.group_sizes]
    times = {g: [] for g in groups}
    tables = {}
    for _ in range(FLAGS.repeats):  # interleaved: A B A B
        for g in groups:
            start = time.perf_counter()
            tables[g] = hardest_negatives(weights, k, block_size=FLAGS.block_size,
                                          valid_rows=n, group_size=g)
            times[g].append(time.perf_counter() - start)
    ours, ours_times = tables[groups[0]], times[groups[0]]
    same = {str(g): bool(np.array_equal(tables[g], ours)) for g in groups[1:]}
    by_group = {("default" if g is None else str(g)): {"best_s": min(t), "all_s": t}
                for g, t in times.items()}
    if not FLAGS.faiss:
        result = {"num_instances": n, "dim": d, "k": k, "devices": FLAGS.virtual_devices,
                  "group_sizes": by_group, "tables_equal_to_first": same}
        print(json.dumps(result, indent=1))
        if FLAGS.json:
            with open(FLAGS.json, "w") as f:
                json.dump(result, f, indent=1)
        return

    import faiss

    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    faiss_times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        index = faiss.IndexFlatIP(d)
        index.add(unit)
        sims, found = index.search(unit, k + 1)
        faiss_times.append(time.perf_counter() - start)
    # Remove self: drop the row's own id wherever it appears, keep the first k others.
    theirs = np.empty((n, k), np.int64)
    for i in range(n):
        row = found[i][found[i] != i]
        theirs[i] = row[:k]
    differ = ours != theirs
    rows = np.nonzero(differ.any(axis=1))[0]
    tie_only = True
    for r in rows[:1000]:
        a = np.sort(unit[r] @ unit[ours[r]].T)
        b = np.sort(unit[r] @ unit[theirs[r]].T)
        tie_only &= bool(np.allclose(a, b, atol=1e-6))
    result = {
        "num_instances": n, "dim": d, "k": k, "devices": FLAGS.virtual_devices,
        "block_size": FLAGS.block_size, "ours_s": min(ours_times), "faiss_s": min(faiss_times),
        "ours_s_all": ours_times, "faiss_s_all": faiss_times,
        "ratio_ours_over_faiss": min(ours_times) / min(faiss_times),
        "faiss_version": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
        "entries_differing": int(differ.sum()), "rows_differing": int(len(rows)),
        "differences_are_float32_ties": tie_only,
        "group_sizes": by_group, "tables_equal_to_first": same,
    }
    if FLAGS.train_log:
        with open(os.path.join(FLAGS.train_log, "metrics.jsonl")) as f:
            epochs = [json.loads(line) for line in f if line.strip()]
        mining = sum(e.get("mining_seconds", 0.0) for e in epochs)
        epoch_time = sum(e["train_seconds"] for e in epochs)  # includes the mining
        result.update(train_log=FLAGS.train_log, train_log_epochs=len(epochs),
                      train_log_mining_seconds=mining, train_log_epoch_seconds=epoch_time,
                      train_log_mining_share=mining / epoch_time)
    print(json.dumps(result, indent=1))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
