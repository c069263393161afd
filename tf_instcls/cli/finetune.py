r"""Semi-supervised fine-tuning with a fraction of the labels, or full fine-tuning for
transfer to another dataset; top-1 / top-5 on the evaluation split.

  # 10% of the labels of the run's own data (class-balanced, deterministic subset)
  python tools/finetune.py --model_dir=runs/cifar_subset --label_fraction=0.1
  # ImageNet 1% / 10%: TFDS's official imagenet2012_subset splits are used
  python tools/finetune.py --model_dir=runs/in1k --dataset=tfds:imagenet2012:train \
      --eval_dataset=tfds:imagenet2012:validation --label_fraction=0.01
  # transfer: all labels of another dataset
  python tools/finetune.py --export_dir=runs/in1k/export --dataset=tfds:cifar100:train \
      --eval_dataset=tfds:cifar100:test --label_fraction=1 --epochs=100

Learning rates default to the paper's (1%: backbone 0.001 / classifier 15; otherwise
0.001 / 10); the classifier sits on L2-normalised pooled features. The labelled subset's
ids are written to <out_dir>/label_subset_<fraction>.json. Writes finetune.json / .md.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from tf_instcls.cli import common

FLAGS = flags.FLAGS
common.define_model_and_data_flags("eval")
flags.DEFINE_float("label_fraction", 0.1, "Fraction of labelled training images (0, 1].")
flags.DEFINE_integer("epochs", 30, "Fine-tuning epochs.", lower_bound=1)
flags.DEFINE_integer("finetune_batch_size", 256, "Global batch.", lower_bound=1)
flags.DEFINE_float("backbone_lr", None, "Backbone lr (default: the paper's, 0.001).")
flags.DEFINE_float("classifier_lr", None, "Classifier lr (default: the paper's, 15 for 1% "
                   "and 10 otherwise).")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 0.0, "Coupled L2 weight decay.")
flags.DEFINE_bool("baselines", False, "Also fine-tune the same network from random "
                  "initialisation, and train a linear classifier on the labelled images' "
                  "raw pixels (standardised).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not 0 < FLAGS.label_fraction <= 1:
        raise app.UsageError(f"--label_fraction must be in (0, 1]; got {FLAGS.label_fraction}")
    out = common.out_dir("eval")
    mesh = common.make_mesh()
    from tf_instcls.data import load_source
    from tf_instcls.eval import finetune as ft

    paper_bb, paper_clf = ft.PAPER_LEARNING_RATES.get(round(FLAGS.label_fraction, 4),
                                                      (0.001, 10.0))
    backbone_lr = paper_bb if FLAGS.backbone_lr is None else FLAGS.backbone_lr
    classifier_lr = paper_clf if FLAGS.classifier_lr is None else FLAGS.classifier_lr
    models, splits = common.load_models_and_splits(mesh, baselines=FLAGS.baselines)
    train, evaluation, data = splits.train, splits.evaluation, splits.description
    official = ft.tfds_subset_spec(data["dataset"], FLAGS.label_fraction)
    if official:
        labelled = load_source(official)
        subset_desc = official
    elif FLAGS.label_fraction < 1:
        ids = ft.label_subset(train.labels, FLAGS.label_fraction, data["seed"])
        labelled = train.subset(ids, f"{train.name}[{FLAGS.label_fraction:g}]")
        subset_path = os.path.join(out, f"label_subset_{FLAGS.label_fraction:g}.json")
        os.makedirs(out, exist_ok=True)
        with open(subset_path, "w") as f:
            json.dump({"dataset": data["dataset"], "fraction": FLAGS.label_fraction,
                       "seed": data["seed"], "ids": ids.tolist()}, f)
        subset_desc = f"{len(ids)} class-balanced ids ({subset_path})"
    else:
        labelled, subset_desc = train, "all labels"
    from tf_instcls.data import LabelledSplits
    from tf_instcls.eval import evaluators, runner

    # the classes of the whole labelled split, whichever images the subset holds
    splits = LabelledSplits(labelled, evaluation, seed=data["seed"], description=data,
                            classes=splits.num_classes)
    evaluator = evaluators.FinetuneEvaluator(
        label_fraction=FLAGS.label_fraction, epochs=FLAGS.epochs,
        batch_size=FLAGS.finetune_batch_size, backbone_lr=backbone_lr,
        classifier_lr=classifier_lr, momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay)
    print(f"labelled images: {labelled.num_images} ({subset_desc})", flush=True)
    runner.evaluate(evaluator, models, splits, out_dir=out,
                    report=f"finetune_{FLAGS.label_fraction:g}", tool="finetune",
                    record={"labelled": subset_desc},
                    heading=f"# Fine-tuning with {FLAGS.label_fraction:g} of the labels\n\n"
                    f"{subset_desc}; eval {data['eval_dataset']} ({data['num_eval']} images); "
                    f"{FLAGS.epochs} epochs, backbone lr {backbone_lr}, classifier lr "
                    f"{classifier_lr}; {mesh.size} device(s)\n\n")


def run():
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)
