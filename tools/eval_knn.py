r"""Weighted kNN evaluation (NPID protocol): the training split's features are the bank,
the evaluation split's are the queries; cosine similarity, k = 200 neighbours voting
with weight exp(s / 0.07); top-1 / top-5.

  python tools/eval_knn.py --model_dir=runs/cifar_subset --virtual_devices=2
  python tools/eval_knn.py --export_dir=runs/cifar_subset/export --grid --baselines
  python tools/eval_knn.py --model_dir=runs/in1k --dataset=tfds:imagenet2012:train \
      --eval_dataset=tfds:imagenet2012:validation --feature=features

Writes <out_dir>/knn.json and knn.md. ``--baselines`` adds the same network at random
initialisation and raw pixels. The neighbour search is blockwise over queries and bank,
so a 1.28M-image bank fits in memory.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

if not __package__:  # run as a script (python tools/X.py): relative imports, PEP 366
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "tools"

from . import common

FLAGS = flags.FLAGS
common.define_model_and_data_flags("eval")
flags.DEFINE_integer("k", 200, "Neighbours that vote.", lower_bound=1)
flags.DEFINE_float("temperature", 0.07, "Vote weight exp(similarity / temperature).")
flags.DEFINE_enum("feature", "both", ["features", "embedding", "both"],
                  "Backbone pooled features, head embeddings, or both.")
flags.DEFINE_bool("grid", False, "Also sweep --grid_k x --grid_temperature.")
flags.DEFINE_list("grid_k", ["10", "20", "50", "100", "200"], "k values of the sweep.")
flags.DEFINE_list("grid_temperature", ["0.03", "0.05", "0.07", "0.1", "0.2"],
                  "Temperatures of the sweep.")
flags.DEFINE_bool("baselines", False, "Also evaluate the network at random initialisation "
                  "and raw pixels.")
flags.DEFINE_bool("cache_features", True, "Cache features in <out_dir>/cache.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.temperature <= 0:
        raise app.UsageError("--temperature must be > 0")
    try:
        ks = [int(k) for k in FLAGS.grid_k]
        temps = [float(t) for t in FLAGS.grid_temperature]
    except ValueError as err:
        raise app.UsageError(f"--grid_k / --grid_temperature: {err}") from err
    if min(ks) < 1 or min(temps) <= 0:
        raise app.UsageError("--grid_k must be >= 1 and --grid_temperature > 0")
    out = common.out_dir("eval")
    mesh = common.make_mesh()
    from tf_instcls.eval import common as ec
    from tf_instcls.eval.knn import knn_grid

    model, train, evaluation, data = common.load_model_and_splits(mesh)
    kinds = ["features", "embedding"] if FLAGS.feature == "both" else [FLAGS.feature]
    models = [model]
    if FLAGS.baselines:
        models.append(common.load_random_init_model(mesh))
    cache = f"{out}/cache" if FLAGS.cache_features else None
    rows, record = [], {"tool": "eval_knn", "data": data, "k": FLAGS.k,
                        "temperature": FLAGS.temperature, "results": []}
    num_classes = int(max(train.labels.max(), evaluation.labels.max())) + 1

    def evaluate(name, bank, queries, describe):
        grid_ks = sorted(set(ks + [FLAGS.k])) if FLAGS.grid else [FLAGS.k]
        grid_ts = sorted(set(temps + [FLAGS.temperature])) if FLAGS.grid else [
            FLAGS.temperature]
        results = knn_grid(bank, train.labels, queries, evaluation.labels, ks=grid_ks,
                           temperatures=grid_ts, num_classes=num_classes)
        main_result = next(r for r in results if r["k"] == min(FLAGS.k, len(bank))
                           and r["temperature"] == FLAGS.temperature)
        entry = {**describe, "representation": name, "top1": main_result["top1"],
                 "top5": main_result["top5"], "k": main_result["k"]}
        if FLAGS.grid:
            entry["grid"] = results
        record["results"].append(entry)
        rows.append([describe.get("model", "raw pixels"), name, main_result["top1"],
                     main_result["top5"]])
        print(f"{rows[-1][0]} [{name}]: kNN top-1 {main_result['top1']:.2f}%  "
              f"top-5 {main_result['top5']:.2f}%", flush=True)

    for m in models:
        bank = ec.compute_features(m, train, batch_size=FLAGS.batch_size, cache_dir=cache)
        queries = ec.compute_features(m, evaluation, batch_size=FLAGS.batch_size,
                                      cache_dir=cache)
        for kind in kinds:
            evaluate(kind, bank[kind], queries[kind], m.describe())
    if FLAGS.baselines:
        evaluate("pixels", ec.raw_pixels(train, model.image_size),
                 ec.raw_pixels(evaluation, model.image_size), {"model": "raw pixels"})
    md = (f"# Weighted kNN (k={FLAGS.k}, T={FLAGS.temperature})\n\n"
          f"bank: {data['dataset']} ({data['num_train']} images); queries: "
          f"{data['eval_dataset']} ({data['num_eval']} images); "
          f"{mesh.size} device(s)\n\n"
          + ec.markdown_table(["model", "representation", "top-1", "top-5"], rows))
    if FLAGS.grid:
        for entry in record["results"]:
            md += (f"\n## Sweep: {entry.get('model')} [{entry['representation']}] top-1\n\n")
            grid_ts = sorted({r["temperature"] for r in entry["grid"]})
            table = {}
            for r in entry["grid"]:
                table.setdefault(r["k"], {})[r["temperature"]] = r["top1"]
            md += ec.markdown_table(["k \\ T"] + [str(t) for t in grid_ts],
                                    [[k] + [table[k][t] for t in grid_ts]
                                     for k in sorted(table)])
    json_path, md_path = ec.write_results(out, "knn", record, md)
    print(f"wrote {json_path} and {md_path}")


def run():
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)
