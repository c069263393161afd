"""Analyses of a run: instance classification accuracy of a checkpoint (paper Fig. 1b),
training curves, TensorBoard Embedding Projector files."""

from __future__ import annotations

import json
import os

import numpy as np

from tf_instcls.eval.knn import nearest_neighbours


def instance_accuracy(embeddings, class_weights, ids=None) -> float:
    """% of images whose nearest row of W (cosine) is their own: the task the
    classifier is trained on, measured on the eval view. Blockwise (no [n, N] matrix)."""
    ids = np.arange(len(embeddings)) if ids is None else np.asarray(ids)
    nearest, _ = nearest_neighbours(class_weights, embeddings, 1)
    return float((nearest[:, 0] == ids).mean() * 100)


def read_metrics(model_dir: str) -> list[dict]:
    """Per-epoch records of a run, one per epoch in order; ``model_dir`` may also be
    the path of a metrics.jsonl itself."""
    path = model_dir if os.path.isfile(model_dir) else os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (written by tools/train.py every epoch)")
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    by_epoch = {}
    for record in records:  # a resumed run may repeat an epoch: keep the last
        by_epoch[int(record["epoch"])] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def curves_series(records: list[dict]) -> dict:
    """Panels for plots.line_plots: loss, instance accuracy, kNN top-1/5, lr."""
    epochs = [int(r["epoch"]) + 1 for r in records]

    def col(key):
        pairs = [(e, r[key]) for e, r in zip(epochs, records) if key in r]
        return ([p[0] for p in pairs], [p[1] for p in pairs])

    series = {"loss": col("loss"), "instance accuracy (%)": (
        epochs, [100 * r.get("instance_acc", np.nan) for r in records])}
    knn = {k: col(k) for k in ("knn_top1", "knn_top5") if any(k in r for r in records)}
    if knn:
        series["kNN accuracy (%)"] = knn
    series["learning rate (end of epoch)"] = col("lr")
    return series


def write_projector(log_dir: str, embeddings, labels=None, images=None, *,
                    class_names=None, tensor_name: str = "embedding") -> str:
    """TensorBoard Embedding Projector files: vectors (TSV), metadata, sprite, config.

    ``tensorboard --logdir=<log_dir>`` then shows them under "Projector".
    """
    from tensorboard.plugins import projector

    os.makedirs(log_dir, exist_ok=True)
    embeddings = np.asarray(embeddings, np.float32)
    np.savetxt(os.path.join(log_dir, "vectors.tsv"), embeddings, delimiter="\t", fmt="%.6f")
    config = projector.ProjectorConfig()
    emb = config.embeddings.add()
    emb.tensor_name = tensor_name
    emb.tensor_path = "vectors.tsv"
    if labels is not None:
        with open(os.path.join(log_dir, "metadata.tsv"), "w") as f:
            f.write("label\tclass\tindex\n")
            for i, label in enumerate(labels):
                name = class_names[label] if class_names is not None else label
                f.write(f"{int(label)}\t{name}\t{i}\n")
        emb.metadata_path = "metadata.tsv"
    if images is not None:
        images = np.asarray(images, np.uint8)
        side = int(np.ceil(np.sqrt(len(images))))
        h, w = images.shape[1:3]
        sprite = np.zeros((side * h, side * w, 3), np.uint8)
        for i, image in enumerate(images):
            r, c = divmod(i, side)
            sprite[r * h : (r + 1) * h, c * w : (c + 1) * w] = image
        import matplotlib.image

        matplotlib.image.imsave(os.path.join(log_dir, "sprite.png"), sprite)
        emb.sprite.image_path = "sprite.png"
        emb.sprite.single_image_dim.extend([w, h])
    projector.visualize_embeddings(log_dir, config)
    return log_dir
