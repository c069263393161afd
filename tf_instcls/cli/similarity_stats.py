r"""The paper's Fig. 4 analysis for each W initialisation mode: intra / inter cosine
similarity and their gap at initialisation; writes a bar chart PNG and JSON.

  python tools/similarity_stats.py --dataset=npz:../shared/data/cifar10_subset_train.npz \
      --backbone=resnet18_cifar --backbone_width=16 --out_dir=runs/fig4_cifar_subset
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "digits", "Dataset spec (digits | npz: | folder: | tfds:).")
flags.DEFINE_integer("num_images", 2000, "Use the first N images (0 = all).", lower_bound=0)
flags.DEFINE_string("backbone", "convnet_small", "Backbone name.")
flags.DEFINE_integer("backbone_width", None, "Backbone width (None: its default).")
flags.DEFINE_integer("head_hidden_dim", 512, "MLP head hidden width.")
flags.DEFINE_integer("image_size", 32, "Input size.")
flags.DEFINE_integer("seed", 0, "Seed of the random network and the augmentations.")
flags.DEFINE_integer("virtual_devices", 0, "T virtual CPU devices; 0 = real devices.",
                     lower_bound=0)
flags.DEFINE_string("out_dir", "runs/fig4", "Where similarity_stats.{json,png} go.")


def plot(results: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.27
    for offset, key in zip((-width, 0, width), ("intra", "inter", "gap")):
        bars = ax.bar([i + offset for i in range(len(modes))],
                      [results[m][key] for m in modes], width, label=key)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylabel("cosine similarity (%)")
    ax.set_title(title, fontsize=10)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    from tf_instcls import parallel

    if FLAGS.virtual_devices:
        parallel.configure_virtual_devices(FLAGS.virtual_devices)
    import numpy as np

    from tf_instcls.data import load_source
    from tf_instcls.eval.similarity import similarity_stats

    source = load_source(FLAGS.dataset)
    if FLAGS.num_images and FLAGS.num_images < source.num_images:
        source = source.subset(np.arange(FLAGS.num_images), source.name)
    mesh = parallel.build_mesh(FLAGS.virtual_devices or None,
                               device_type="CPU" if FLAGS.virtual_devices else None)
    results = similarity_stats(source, mesh, backbone=FLAGS.backbone,
                               image_size=FLAGS.image_size, seed=FLAGS.seed,
                               backbone_width=FLAGS.backbone_width,
                               head_hidden_dim=FLAGS.head_hidden_dim)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    record = {"dataset": FLAGS.dataset, "num_images": source.num_images,
              "backbone": FLAGS.backbone, "backbone_width": FLAGS.backbone_width,
              "seed": FLAGS.seed, "results": results}
    with open(os.path.join(FLAGS.out_dir, "similarity_stats.json"), "w") as f:
        json.dump(record, f, indent=1)
    title = (f"initial W vs augmented views: {FLAGS.dataset.split('/')[-1]}, "
             f"{source.num_images} images, {FLAGS.backbone}")
    plot(results, os.path.join(FLAGS.out_dir, "similarity_stats.png"), title)
    for mode, r in results.items():
        print(f"{mode:>18}: intra {r['intra']:6.2f}%  inter {r['inter']:6.2f}%  "
              f"gap {r['gap']:6.2f}%")


def run():
    """Console-script entry point."""
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)
