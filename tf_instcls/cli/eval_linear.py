r"""Linear evaluation: frozen backbone, pooled features, a softmax classifier trained
with SGD + momentum and a cosine schedule; top-1 / top-5 on the evaluation split.

  python tools/eval_linear.py --model_dir=runs/cifar_subset --virtual_devices=2
  python tools/eval_linear.py --export_dir=runs/cifar_subset/export --augment=standard
  python tools/eval_linear.py --model_dir=runs/in1k --dataset=tfds:imagenet2012:train \
      --eval_dataset=tfds:imagenet2012:validation --epochs=100

Defaults: 100 epochs, batch 256, lr 0.1 cosine, standardised features (BN without
affine, as MoCo v3 / MAE). ``--paper_protocol`` uses the paper's ImageNet setting
(batch 2048, lr 40, L2-normalised features). On small data the paper's setting takes
few steps per epoch and underfits: on a 1-epoch digits run it gave 46.5% against 87.0%
with the defaults. ``--augment=none`` computes features once (cached in
<out_dir>/cache); ``--augment=standard`` recomputes the training features every epoch
from a random resized crop + flip (frozen backbone, BN in inference mode).
The tool checks, and reports, that the backbone's weights did not change.
Writes <out_dir>/linear.json and linear.md.
"""

from __future__ import annotations

import sys

from absl import app, flags

from tf_instcls.cli import common

FLAGS = flags.FLAGS
common.define_model_and_data_flags("eval")
flags.DEFINE_integer("epochs", 100, "Epochs of the linear classifier.", lower_bound=1)
flags.DEFINE_integer("linear_batch_size", 256, "Batch of the linear classifier.",
                     lower_bound=1)
flags.DEFINE_float("learning_rate", 0.1, "Peak lr (cosine to 0).")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 0.0, "L2 on the classifier weights.")
flags.DEFINE_enum("feature_norm", "standardize", ["l2", "standardize", "none"],
                  "Feature normalisation before the classifier (standardize: per-dimension "
                  "mean/std of the training split, i.e. BN without affine).")
flags.DEFINE_bool("paper_protocol", False, "The paper's ImageNet setting: batch 2048, lr 40, "
                  "L2-normalised features (overrides the three flags above).")
flags.DEFINE_enum("augment", "none", ["none", "standard"],
                  "Training-view augmentation (standard: random resized crop + flip).")
flags.DEFINE_enum("feature", "features", ["features", "embedding"],
                  "Backbone pooled features (the protocol) or head embeddings.")
flags.DEFINE_bool("baselines", False, "Also evaluate the network at random initialisation "
                  "and raw pixels.")
flags.DEFINE_bool("cache_features", True, "Cache unaugmented features in <out_dir>/cache.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.learning_rate <= 0:
        raise app.UsageError("--learning_rate must be > 0")
    if FLAGS.paper_protocol:
        FLAGS.linear_batch_size, FLAGS.learning_rate, FLAGS.feature_norm = 2048, 40.0, "l2"
    out = common.out_dir("eval")
    mesh = common.make_mesh()
    from tf_instcls.eval import evaluators, runner

    models, splits = common.load_models_and_splits(
        mesh, baselines=FLAGS.baselines,
        cache_dir=f"{out}/cache" if FLAGS.cache_features else None)
    evaluator = evaluators.LinearEvaluator(
        epochs=FLAGS.epochs, batch_size=FLAGS.linear_batch_size,
        learning_rate=FLAGS.learning_rate, momentum=FLAGS.momentum,
        weight_decay=FLAGS.weight_decay, feature_norm=FLAGS.feature_norm,
        augment=FLAGS.augment, representation=FLAGS.feature,
        feature_batch_size=FLAGS.batch_size)
    data, p = splits.description, evaluator.describe()["protocol"]
    runner.evaluate(evaluator, models, splits, out_dir=out, report="linear",
                    tool="eval_linear",
                    heading=f"# Linear evaluation\n\n{data['dataset']} ({data['num_train']} "
                    f"train) -> {data['eval_dataset']} ({data['num_eval']} eval); "
                    f"{p['epochs']} epochs, batch {p['linear_batch_size']}, lr "
                    f"{p['learning_rate']} cosine, {p['feature_norm']} features, "
                    f"augmentation {p['augment']}; {mesh.size} device(s)\n\n")


def run():
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)
