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

import sys

from absl import app, flags

from tf_instcls import defaults
from tf_instcls.cli import common

FLAGS = flags.FLAGS
common.define_model_and_data_flags("eval")
flags.DEFINE_integer("k", defaults.KNN_K, "Neighbours that vote.", lower_bound=1)
flags.DEFINE_float("temperature", defaults.KNN_TEMPERATURE,
                   "Vote weight exp(similarity / temperature).")
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
    from tf_instcls.eval import evaluators, runner

    models, splits = common.load_models_and_splits(
        mesh, baselines=FLAGS.baselines,
        cache_dir=f"{out}/cache" if FLAGS.cache_features else None)
    evaluator = evaluators.KNNEvaluator(
        k=FLAGS.k, temperature=FLAGS.temperature,
        representations=evaluators.FEATURE_KINDS if FLAGS.feature == "both"
        else (FLAGS.feature,),
        grid_ks=tuple(ks) if FLAGS.grid else (),
        grid_temperatures=tuple(temps) if FLAGS.grid else ())
    data = splits.description
    runner.evaluate(evaluator, models, splits, out_dir=out, report="knn", tool="eval_knn",
                    heading=f"# Weighted kNN (k={FLAGS.k}, T={FLAGS.temperature})\n\n"
                    f"bank: {data['dataset']} ({data['num_train']} images); queries: "
                    f"{data['eval_dataset']} ({data['num_eval']} images); "
                    f"{mesh.size} device(s)\n\n")


def run():
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)
