r"""Plots the per-epoch metrics of several runs side by side (one panel per metric).

For example, the geometry of several runs side by side:

  python benchmarks/compare_runs.py --out=runs/geometry.png \
      --run=paper:runs/paper --run=unit_w:runs/unit_w \
      --metrics=knn_top1,loss,w_alignment,w_mean_cos,emb_mean_cos,w_norm_mean

Each --run is LABEL:PATH, PATH a model_dir (its metrics.jsonl, written by
tools/train.py) or a copy of a metrics.jsonl. Metrics
that the kNN monitor logs at initialisation (``init_*``) are drawn at epoch 0.
"""

from __future__ import annotations

from absl import app, flags

from tf_instcls.eval import plots
from tf_instcls.eval.analysis import read_metrics

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("run", [], "LABEL:MODEL_DIR, repeatable.")
flags.DEFINE_list("metrics", ["knn_top1", "loss", "instance_acc", "w_alignment",
                              "w_mean_cos", "emb_mean_cos"], "metrics.jsonl keys to plot.")
flags.DEFINE_string("out", None, "PNG path.")
flags.DEFINE_string("title", "", "Figure title.")


def series_of(runs: dict, metrics) -> dict:
    """{metric: {label: (epochs, values)}} from {label: records}; epoch 0 = the
    ``init_`` value where the run logged one."""
    out = {}
    for key in metrics:
        panel = {}
        for label, records in runs.items():
            xs, ys = [], []
            if records and f"init_{key}" in records[0]:
                xs.append(0)
                ys.append(records[0][f"init_{key}"])
            for record in records:
                if key in record:
                    xs.append(int(record["epoch"]) + 1)
                    ys.append(record[key])
            if xs:
                panel[label] = (xs, ys)
        if panel:
            out[key] = panel
    return out


def main(argv):
    del argv
    if not FLAGS.run or not FLAGS.out:
        raise app.UsageError("give --out and at least one --run=LABEL:MODEL_DIR")
    runs = {}
    for spec in FLAGS.run:
        label, sep, model_dir = spec.partition(":")
        if not sep or not model_dir:
            raise app.UsageError(f"--run must be LABEL:MODEL_DIR; got {spec!r}")
        runs[label] = read_metrics(model_dir)
    series = series_of(runs, FLAGS.metrics)
    if not series:
        raise app.UsageError(f"none of {FLAGS.metrics} is in the runs' metrics.jsonl")
    plots.line_plots(series, FLAGS.out, title=FLAGS.title)
    print(f"wrote {FLAGS.out}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
