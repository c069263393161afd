r"""Is data the bottleneck? Images/s of the input pipeline alone vs the train step alone.

Uses a pretraining gin config. Pipeline: iterate the epoch's tf.data batches (decode,
two augmented views) without training. Step: run the DTensor train step repeatedly on
one batch already on the mesh (no input cost). Images are counted as instances
(each gives two views).

  python benchmarks/bench_pipeline.py --gin_file=gin/cifar10_subset_npz.gin --virtual_devices=4
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags

from tf_instcls.cli import gin_config

import harness

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [os.path.join(harness.GIN_DIR, "digits.gin")], "gin configs.")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings.")
flags.DEFINE_integer("virtual_devices", 4, "T virtual CPU devices; 0 = real devices.",
                     lower_bound=0)
flags.DEFINE_integer("batches", 20, "Batches timed for each side.", lower_bound=2)
flags.DEFINE_string("json", None, "Write the result here.")


def main(argv):
    del argv
    from tf_instcls import parallel

    if FLAGS.virtual_devices:
        parallel.configure_virtual_devices(FLAGS.virtual_devices)
    from tf_instcls import data as data_lib
    from tf_instcls.parallel import layouts
    from tf_instcls.training import loop
    from tf_instcls.training.step import make_train_step

    config = gin_config.configs_from_gin(FLAGS.gin_file, FLAGS.gin_bindings)
    data, model, train = config.data, config.model, config.train
    mesh = parallel.build_mesh(FLAGS.virtual_devices or None,
                               device_type="CPU" if FLAGS.virtual_devices else None)
    # A fresh model_dir: a shared one would hold another config's run (refused) or a
    # checkpoint of this one (silently restored).
    state = loop.build_state(tempfile.mkdtemp(prefix="bench_pipeline_"), config=config,
                             mesh=mesh)
    augment = data.augment_config()
    dataset = data_lib.make_train_dataset(state.train_source, augment,
                                          global_batch_size=train.batch_size, epoch=0,
                                          seed=train.seed).repeat()
    iterator = iter(dataset)
    batch = next(iterator)
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
        batch = next(iterator)
    pipeline = FLAGS.batches * train.batch_size / (time.perf_counter() - start)

    step = make_train_step(state.encoder, state.classifier, state.optimizer, lambda s: 0.01,
                           state.method)
    images = layouts.pack_local_batch(batch["images"], layouts.batch_layout(mesh, 5))
    ids = layouts.pack_local_batch(batch["ids"], layouts.batch_layout(mesh, 1))
    parallel.to_numpy(step(images, ids, state.global_step)["loss"])  # trace
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
        out = step(images, ids, state.global_step)
    parallel.to_numpy(out["loss"])
    train_step = FLAGS.batches * train.batch_size / (time.perf_counter() - start)
    result = {
        "config": FLAGS.gin_file[-1], "devices": mesh.size, "batch_size": train.batch_size,
        "backbone": model.backbone, "image_size": data.image_size,
        "pipeline_images_per_sec": pipeline, "train_step_images_per_sec": train_step,
        "data_is_bottleneck": pipeline < train_step,
    }
    print(json.dumps(result, indent=1))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
