r"""Embeds a dataset with an exported encoder and answers nearest-neighbour queries.

  # 1) embed: writes embeddings.npy, features.npy, ids.npy [, labels.npy], meta.json
  python tools/embed.py --export_dir=runs/digits/export --dataset=digits --out_dir=emb/digits
  # 2) query the embedded set (the embedding pass is skipped when out_dir has one)
  python tools/embed.py --export_dir=runs/digits/export --dataset=digits --out_dir=emb/digits \
      --query=cat.png --top_k=8 --grid=emb/digits/cat.png

``--export_dir`` is a version directory or an export base (its latest version).
Images go through the ``serving_default`` signature (queries through ``serve_bytes``),
so the numbers are exactly what TF Serving would return.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "An export version dir, or its base (latest version).")
flags.DEFINE_string("dataset", None, "digits | npz:PATH | folder:PATH | tfds:NAME[:SPLIT]; "
                    "may be omitted when --out_dir already holds embeddings.")
flags.DEFINE_string("out_dir", None, "Where the .npy files and meta.json go.")
flags.DEFINE_integer("batch_size", 256, "Images per signature call.", lower_bound=1)
flags.DEFINE_bool("recompute", False, "Embed again even if --out_dir has embeddings.")
flags.DEFINE_multi_string("query", [], "Image file(s) to find neighbours of (repeatable).")
flags.DEFINE_integer("top_k", 8, "Neighbours per query.", lower_bound=1)
flags.DEFINE_string("grid", None, "Write a retrieval grid PNG of the queries' neighbours.")
flags.mark_flags_as_required(["export_dir", "out_dir"])


def embed_source(serve, source, image_size: int, batch_size: int, progress: bool = True):
    """(embeddings [n, D], features [n, F]) of every image of ``source``, in id order."""
    import numpy as np
    import tensorflow as tf

    load = source.load_fn(image_size)
    dataset = (tf.data.Dataset.range(source.num_images)
               .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    total = int(np.ceil(source.num_images / batch_size))
    bar = tf.keras.utils.Progbar(total, verbose=1 if progress else 0, unit_name="batch")
    embeddings, features = [], []
    for images in dataset:
        out = serve(images=images)
        embeddings.append(out["embedding"].numpy())
        features.append(out["features"].numpy())
        bar.add(1)
    return np.concatenate(embeddings), np.concatenate(features)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import numpy as np
    import tensorflow as tf

    from tf_instcls import export
    from tf_instcls.data import load_source

    try:
        export_dir = export.resolve_export_dir(FLAGS.export_dir)
        info = export.load_export_info(export_dir)
    except FileNotFoundError as err:
        raise app.UsageError(str(err)) from err
    for path in FLAGS.query:
        if not os.path.isfile(path):
            raise app.UsageError(f"--query file not found: {path}")
    model = tf.saved_model.load(export_dir)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    meta_path = os.path.join(FLAGS.out_dir, "meta.json")
    have = os.path.exists(meta_path) and not FLAGS.recompute
    source = None
    if FLAGS.dataset:
        source = load_source(FLAGS.dataset)
    if have:
        with open(meta_path) as f:
            meta = json.load(f)
        if FLAGS.dataset and meta["dataset"] != FLAGS.dataset:
            raise app.UsageError(f"{FLAGS.out_dir} holds embeddings of {meta['dataset']}, not "
                                 f"{FLAGS.dataset}; use another --out_dir or --recompute")
        print(f"using the embeddings in {FLAGS.out_dir} ({meta['num_images']} images)")
    else:
        if source is None:
            raise app.UsageError("--dataset is required to embed (no embeddings in --out_dir)")
        print(f"embedding {source.num_images} images of {FLAGS.dataset} with {export_dir}")
        emb, feats = embed_source(model.signatures["serving_default"], source,
                                  info["image_size"], FLAGS.batch_size)
        np.save(os.path.join(FLAGS.out_dir, "embeddings.npy"), emb)
        np.save(os.path.join(FLAGS.out_dir, "features.npy"), feats)
        np.save(os.path.join(FLAGS.out_dir, "ids.npy"), np.arange(source.num_images))
        if source.labels is not None:
            np.save(os.path.join(FLAGS.out_dir, "labels.npy"), source.labels)
        meta = {"dataset": FLAGS.dataset, "export_dir": export_dir,
                "num_images": source.num_images, "embedding_dim": int(emb.shape[1]),
                "feature_dim": int(feats.shape[1]), "paths": source.paths,
                "class_names": source.class_names}
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
        print(f"wrote {FLAGS.out_dir}/embeddings.npy {emb.shape}, features.npy {feats.shape}")
    if not FLAGS.query:
        return
    bank = np.load(os.path.join(FLAGS.out_dir, "embeddings.npy"))
    labels_path = os.path.join(FLAGS.out_dir, "labels.npy")
    labels = np.load(labels_path) if os.path.exists(labels_path) else None
    blobs = [open(p, "rb").read() for p in FLAGS.query]
    try:
        q = model.signatures["serve_bytes"](image_bytes=tf.constant(blobs))["embedding"]
    except tf.errors.InvalidArgumentError as err:
        raise app.UsageError(f"could not decode a --query image: {err.message}") from err
    from tf_instcls.eval.knn import nearest_neighbours

    index, scores = nearest_neighbours(bank, q.numpy(), FLAGS.top_k)
    results = []
    for path, idx, sc in zip(FLAGS.query, index, scores):
        print(f"query {path}:")
        rows = []
        for rank, (i, s) in enumerate(zip(idx, sc), start=1):
            row = {"rank": rank, "id": int(i), "score": float(s)}
            if labels is not None:
                row["label"] = int(labels[i])
            if meta.get("paths"):
                row["path"] = meta["paths"][i]
            rows.append(row)
            print("  " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in row.items()))
        results.append({"query": path, "neighbours": rows})
    with open(os.path.join(FLAGS.out_dir, "queries.json"), "w") as f:
        json.dump(results, f, indent=1)
    if FLAGS.grid:
        from tf_instcls.eval.plots import retrieval_grid

        if source is None:
            source = load_source(meta["dataset"])
        size = info["image_size"]
        load = source.load_fn(size)
        neighbours = np.stack([[load(int(i)).numpy() for i in row] for row in index])
        queries = np.stack([tf.image.resize(tf.io.decode_image(b, channels=3,
                                                               expand_animations=False),
                                            [size, size]).numpy().astype(np.uint8)
                            for b in blobs])
        retrieval_grid(queries, neighbours, FLAGS.grid, scores=scores,
                       neighbour_labels=None if labels is None else labels[index],
                       class_names=meta.get("class_names"))
        print(f"wrote {FLAGS.grid}")


def run():
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)
