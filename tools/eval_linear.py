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
with the defaults (WORKSPACE.md). ``--augment=none`` computes features once (cached in
<out_dir>/cache); ``--augment=standard`` recomputes the training features every epoch
from a random resized crop + flip (frozen backbone, BN in inference mode).
The tool checks, and reports, that the backbone's weights did not change.
Writes <out_dir>/linear.json and linear.md.
"""

from __future__ import annotations

import hashlib
import os
import sys

from absl import app, flags

if not __package__:  # run as a script (python tools/X.py): relative imports, PEP 366
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "tools"

from . import common

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


def weights_digest(encoder) -> str:
    digest = hashlib.sha256()
    for variable in encoder.variables:
        digest.update(variable.path.encode())
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.learning_rate <= 0:
        raise app.UsageError("--learning_rate must be > 0")
    if FLAGS.paper_protocol:
        FLAGS.linear_batch_size, FLAGS.learning_rate, FLAGS.feature_norm = 2048, 40.0, "l2"
    out = common.out_dir("eval")
    mesh = common.make_mesh()
    from tf_instcls import data as data_lib
    from tf_instcls.eval import common as ec
    from tf_instcls.eval.features import extract_features
    from tf_instcls.eval.linear import train_linear

    model, train, evaluation, data = common.load_model_and_splits(mesh)
    models = [model]
    if FLAGS.baselines:
        models.append(common.load_random_init_model(mesh))
    cache = f"{out}/cache" if FLAGS.cache_features else None
    num_classes = int(max(train.labels.max(), evaluation.labels.max())) + 1
    record = {"tool": "eval_linear", "data": data, "results": [],
              "protocol": {k: getattr(FLAGS, k) for k in (
                  "epochs", "linear_batch_size", "learning_rate", "momentum",
                  "weight_decay", "feature_norm", "augment", "feature")}}
    rows = []

    def fit(name, train_x, eval_x, describe, epoch_features=None):
        result = train_linear(
            train_x, train.labels, eval_x, evaluation.labels, num_classes=num_classes,
            epochs=FLAGS.epochs, batch_size=FLAGS.linear_batch_size,
            learning_rate=FLAGS.learning_rate, momentum=FLAGS.momentum,
            weight_decay=FLAGS.weight_decay, feature_norm=FLAGS.feature_norm,
            seed=data["seed"], epoch_features=epoch_features)
        result.pop("weights"), result.pop("bias")
        record["results"].append({**describe, "representation": name, **result})
        rows.append([describe.get("model", "raw pixels"), name, result["top1"],
                     result["top5"], result["train_top1"],
                     describe.get("backbone_unchanged", "-")])
        print(f"{rows[-1][0]} [{name}]: linear top-1 {result['top1']:.2f}%  top-5 "
              f"{result['top5']:.2f}%  (train {result['train_top1']:.2f}%)", flush=True)

    for m in models:
        before = weights_digest(m.encoder)
        bank = ec.compute_features(m, train, batch_size=FLAGS.batch_size, cache_dir=cache)
        queries = ec.compute_features(m, evaluation, batch_size=FLAGS.batch_size,
                                      cache_dir=cache)
        epoch_features = None
        if FLAGS.augment == "standard":
            augment = data_lib.supervised_config(m.image_size)

            def epoch_features(epoch, m=m, augment=augment):
                return extract_features(m.encoder, train, m.image_size, mesh,
                                        batch_size=FLAGS.batch_size,
                                        augment=augment, epoch=epoch,
                                        seed=data["seed"])[FLAGS.feature]

        describe = m.describe()
        fit(FLAGS.feature, bank[FLAGS.feature], queries[FLAGS.feature], describe,
            epoch_features)
        unchanged = weights_digest(m.encoder) == before
        record["results"][-1]["backbone_unchanged"] = unchanged
        rows[-1][-1] = unchanged
        if not unchanged:
            raise RuntimeError("the backbone's weights changed during linear evaluation")
    if FLAGS.baselines:
        fit("pixels", ec.raw_pixels(train, model.image_size),
            ec.raw_pixels(evaluation, model.image_size), {"model": "raw pixels"})
    p = record["protocol"]
    md = (f"# Linear evaluation\n\n{data['dataset']} ({data['num_train']} train) -> "
          f"{data['eval_dataset']} ({data['num_eval']} eval); {p['epochs']} epochs, batch "
          f"{p['linear_batch_size']}, lr {p['learning_rate']} cosine, {p['feature_norm']} "
          f"features, augmentation {p['augment']}; {mesh.size} device(s)\n\n"
          + ec.markdown_table(["model", "representation", "top-1", "top-5", "train top-1",
                               "backbone unchanged"], rows))
    json_path, md_path = ec.write_results(out, "linear", record, md)
    print(f"wrote {json_path} and {md_path}")


def run():
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)
