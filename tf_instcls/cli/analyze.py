r"""Analyses of a pretraining run, as PNG + JSON (+ TensorBoard projector files):

  curves       loss, instance accuracy, kNN top-1/5 and lr per epoch (metrics.jsonl)
  correlation  paper Fig. 1b: for every kept checkpoint, instance classification
               accuracy vs kNN top-1 (and linear top-1 with --linear), as a scatter
  retrieval    nearest-neighbour retrieval grid: evaluation images and their top-8
               training-set neighbours
  projector    embeddings of evaluation images for TensorBoard's Embedding Projector

  python tools/analyze.py --model_dir=runs/cifar_subset --virtual_devices=2
  python tools/analyze.py --model_dir=runs/cifar_subset --what=correlation --linear

Keep checkpoints for the correlation (TrainConfig.keep_checkpoints). Output goes to
<model_dir>/analysis unless --out_dir is given.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from tf_instcls import defaults
from tf_instcls.cli import common

FLAGS = flags.FLAGS
common.define_model_and_data_flags("analysis")
flags.DEFINE_list("what", ["curves", "correlation", "retrieval", "projector"],
                  "Analyses to run.")
flags.DEFINE_bool("linear", False, "correlation: also a linear probe per checkpoint.")
flags.DEFINE_integer("linear_epochs", 30, "correlation: epochs of each linear probe.",
                     lower_bound=1)
flags.DEFINE_integer("num_queries", 8, "retrieval: query images (one per class first).",
                     lower_bound=1)
flags.DEFINE_integer("top_k", 8, "retrieval: neighbours per query.", lower_bound=1)
flags.DEFINE_enum("feature", "features", ["features", "embedding"],
                  "Representation for kNN / retrieval / projector.")
flags.DEFINE_integer("projector_images", 2000, "projector: at most this many images.",
                     lower_bound=1)
flags.DEFINE_integer("knn_k", defaults.KNN_K, "kNN neighbours.", lower_bound=1)

ANALYSES = ("curves", "correlation", "retrieval", "projector")


def _curves(out):
    from tf_instcls.eval import analysis, plots

    records = analysis.read_metrics(FLAGS.model_dir)
    path = os.path.join(out, "curves.png")
    plots.line_plots(analysis.curves_series(records), path,
                     title=f"{FLAGS.model_dir}: {len(records)} epochs")
    print(f"wrote {path}")
    return {"epochs": len(records), "png": path}


def _correlation(out, model, train, evaluation, data):
    import numpy as np
    import tensorflow as tf

    from tf_instcls.data import LabelledSplits
    from tf_instcls.eval import common as ec
    from tf_instcls.eval import evaluators, plots

    state = tf.train.get_checkpoint_state(os.path.join(FLAGS.model_dir, "checkpoints"))
    paths = list(state.all_model_checkpoint_paths) if state else []
    if len(paths) < 2:
        raise app.UsageError("correlation needs >= 2 kept checkpoints; train with "
                             "TrainConfig.keep_checkpoints large enough")
    # instance accuracy is over the pretraining instances: the run's own training split
    # (its dataset, eval split and holdout, with --holdout_fraction / --seed if given)
    from tf_instcls.eval.common import default_data_args, labelled_splits

    info = model.restored.run_info
    args = default_data_args(model, None, None, FLAGS.holdout_fraction, FLAGS.seed)
    pretrain, _ = labelled_splits(*args)
    if pretrain.num_images != info.get("num_instances"):
        raise app.UsageError(
            f"the rebuilt pretraining split has {pretrain.num_images} images but the run "
            f"has N = {info.get('num_instances')}: pass the run's --holdout_fraction")
    # the evaluators of tools/eval_*.py; the model keeps each checkpoint's features in
    # memory, so the pretraining split (usually the kNN bank too) is embedded once
    splits = LabelledSplits(train, evaluation, seed=data["seed"])
    knn = evaluators.KNNEvaluator(k=FLAGS.knn_k, representations=(FLAGS.feature,))
    instances = evaluators.InstanceAccuracyEvaluator()
    linear = evaluators.LinearEvaluator(epochs=FLAGS.linear_epochs, progress=False)
    model.batch_size, model.progress = FLAGS.batch_size, False
    rows = []
    for path in paths:
        ec.assign_checkpoint(model, path)
        inst = instances.run(model, LabelledSplits(pretrain, evaluation))
        row = {"checkpoint": path, "step": model.restored.step,
               "instance_acc": inst["embedding"]["instance_acc"],
               "knn_top1": knn.run(model, splits)[FLAGS.feature]["top1"]}
        if FLAGS.linear:
            row["linear_top1"] = linear.run(model, splits)["features"]["top1"]
        rows.append(row)
        print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()), flush=True)
    xs = [r["instance_acc"] for r in rows]
    points = {"kNN top-1": (xs, [r["knn_top1"] for r in rows])}
    if FLAGS.linear:
        points["linear top-1"] = (xs, [r["linear_top1"] for r in rows])
    result = {"checkpoints": rows}
    for name, (x, y) in points.items():
        result[f"pearson_{name.split()[0].lower()}"] = (
            float(np.corrcoef(x, y)[0, 1]) if np.std(x) > 0 and np.std(y) > 0 else None)
    png = os.path.join(out, "correlation.png")
    plots.scatter(points, png, x_label="instance classification accuracy (%)",
                  y_label="semantic accuracy (%)",
                  title="instance vs semantic accuracy across checkpoints (Fig. 1b)",
                  annotate={k: [f"s{r['step']}" for r in rows] for k in points})
    result["png"] = png
    print(f"wrote {png}; Pearson r: " + ", ".join(
        f"{k}={v:.3f}" for k, v in result.items() if k.startswith("pearson") and v is not None))
    return result


def _retrieval(out, model, train, evaluation):
    import numpy as np

    from tf_instcls.eval import common as ec
    from tf_instcls.eval import plots
    from tf_instcls.eval.knn import nearest_neighbours

    bank = ec.compute_features(model, train, batch_size=FLAGS.batch_size, progress=False)
    queries = ec.compute_features(model, evaluation, batch_size=FLAGS.batch_size,
                                  progress=False)
    # one query per class first (the first eval image of each), then in id order
    first = [int(np.flatnonzero(evaluation.labels == c)[0])
             for c in np.unique(evaluation.labels)]
    rest = [i for i in range(evaluation.num_images) if i not in set(first)]
    chosen = (first + rest)[: FLAGS.num_queries]
    idx, sims = nearest_neighbours(bank[FLAGS.feature], queries[FLAGS.feature][chosen],
                                   FLAGS.top_k)
    size = model.image_size
    load_q, load_b = evaluation.load_fn(size), train.load_fn(size)
    q_images = np.stack([load_q(i).numpy() for i in chosen])
    n_images = np.stack([[load_b(int(j)).numpy() for j in row] for row in idx])
    precision = float((train.labels[idx] == evaluation.labels[chosen][:, None]).mean() * 100)
    png = os.path.join(out, "retrieval.png")
    plots.retrieval_grid(q_images, n_images, png, scores=sims,
                         query_labels=evaluation.labels[chosen],
                         neighbour_labels=train.labels[idx], class_names=train.class_names,
                         title=f"top-{FLAGS.top_k} neighbours ({FLAGS.feature}); "
                               f"same class: {precision:.1f}%")
    print(f"wrote {png} (neighbours of the query's class: {precision:.1f}%)")
    return {"queries": chosen, "neighbours": idx.tolist(), "png": png,
            "precision_at_k": precision}


def _projector(out, model, evaluation):
    import numpy as np

    from tf_instcls.eval import analysis
    from tf_instcls.eval import common as ec

    n = min(FLAGS.projector_images, evaluation.num_images)
    subset = evaluation.subset(np.arange(n), evaluation.name)
    feats = ec.compute_features(model, subset, batch_size=FLAGS.batch_size, progress=False)
    load = subset.load_fn(min(model.image_size, 64))
    images = np.stack([load(i).numpy() for i in range(n)])
    log_dir = analysis.write_projector(os.path.join(out, "projector"), feats[FLAGS.feature],
                                       subset.labels, images, class_names=subset.class_names)
    print(f"wrote projector files to {log_dir} (tensorboard --logdir={log_dir})")
    return {"dir": log_dir, "num_images": n}


def _markdown(results: dict) -> str:
    """A short human summary of analysis.json, with the figures linked."""
    from tf_instcls.eval.tables import markdown_table

    lines = [f"# Analysis of {FLAGS.model_dir or FLAGS.export_dir}\n"]
    if "curves" in results:
        lines.append(f"Training curves ({results['curves']['epochs']} epochs): "
                     "![curves](curves.png)\n")
    if "correlation" in results:
        corr = results["correlation"]
        rows = [[r["step"], r["instance_acc"], r["knn_top1"], r.get("linear_top1", "-")]
                for r in corr["checkpoints"]]
        pearson = ", ".join(f"{k[8:]}: r = {v:.3f}" for k, v in corr.items()
                            if k.startswith("pearson_") and v is not None)
        lines.append(f"## Instance vs semantic accuracy (Fig. 1b)\n\nPearson {pearson}\n\n"
                     + markdown_table(["step", "instance acc %", "kNN top-1 %",
                                       "linear top-1 %"], rows)
                     + "\n![correlation](correlation.png)\n")
    if "retrieval" in results:
        lines.append(f"## Retrieval\n\nneighbours sharing the query's class: "
                     f"{results['retrieval']['precision_at_k']:.1f}%\n\n"
                     "![retrieval](retrieval.png)\n")
    if "projector" in results:
        lines.append(f"## Projector\n\n`tensorboard --logdir={results['projector']['dir']}` "
                     f"({results['projector']['num_images']} images)\n")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = set(FLAGS.what) - set(ANALYSES)
    if unknown:
        raise app.UsageError(f"--what: unknown {sorted(unknown)}; choose from {ANALYSES}")
    if not FLAGS.model_dir and ({"curves", "correlation"} & set(FLAGS.what)):
        raise app.UsageError("curves and correlation need --model_dir (a pretraining run)")
    out = common.out_dir("analysis")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "analysis.json")
    results = {}
    if os.path.exists(path):  # earlier analyses of this out_dir stay; reruns replace
        with open(path) as f:
            results = json.load(f)
    if "curves" in FLAGS.what:
        results["curves"] = _curves(out)
    needs_model = [w for w in FLAGS.what if w != "curves"]
    if needs_model:
        mesh = common.make_mesh()
        model, train, evaluation, data = common.load_model_and_splits(mesh)
        results["data"] = data
        if "retrieval" in FLAGS.what:
            results["retrieval"] = _retrieval(out, model, train, evaluation)
        if "projector" in FLAGS.what:
            results["projector"] = _projector(out, model, evaluation)
        if "correlation" in FLAGS.what:  # last: it loads every checkpoint into the model
            results["correlation"] = _correlation(out, model, train, evaluation, data)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
    md_path = os.path.join(out, "analysis.md")
    with open(md_path, "w") as f:
        f.write(_markdown(results))
    print(f"wrote {md_path}")
    print(f"wrote {path}")


def run():
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)
