r"""The train pipeline's augmentation, before / after, in one process, interleaved.

``before``: another checkout's ``tf_instcls/data/augment.py`` (loaded from its file) in
the pipeline's old shape: ``augment_view`` of each view inside the per-instance map,
then ``batch``. ``after``: this checkout's ``data.make_train_dataset`` (crops, flips and
random draws per instance; the photometric ops once per batch). Same images, same
config (the gin file's augmentation), instances/s over one pass of ``--instances``,
with tf.data single-threaded (``--threads=1``: the CPU cost) or autotuned (0).

  python tools/bench_augment.py --before_code=/tmp/before --rounds=3 --threads=1,0 \
      --dataset=npz:runs/recipe/train_unlabelled.npz --json=OUT.json
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time

from absl import app, flags

if not __package__:  # run as a script (python tools/X.py): relative imports, PEP 366
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "tools"

from . import common

FLAGS = flags.FLAGS
flags.DEFINE_string("before_code", None, "Checkout whose tf_instcls/data/augment.py is "
                    "'before' (applied per view, in the per-instance map).")
flags.DEFINE_multi_string("gin_file", [os.path.join(common.GIN_DIR, "cifar10_subset_npz.gin")],
                          "gin configs (the augmentation and batch size).")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings.")
flags.DEFINE_string("dataset", None, "Overrides DataConfig.dataset.")
flags.DEFINE_integer("instances", 2048, "Instances per timed pass.", lower_bound=128)
flags.DEFINE_list("threads", ["1", "0"], "tf.data threads: 1 = single-threaded, 0 = autotune.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_string("json", None, "Write the result here.")
flags.mark_flag_as_required("before_code")


def _load_module(path):
    spec = importlib.util.spec_from_file_location("before_augment", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def main(argv):
    del argv
    import dataclasses

    import tensorflow as tf

    from tf_instcls import data as data_lib

    path = os.path.join(FLAGS.before_code, "tf_instcls", "data", "augment.py")
    if not os.path.isfile(path):
        raise app.UsageError(f"--before_code: {path} does not exist")
    before = _load_module(path)
    bindings = list(FLAGS.gin_bindings)
    if FLAGS.dataset:
        bindings.append(f"DataConfig.dataset = '{FLAGS.dataset}'")
    config = common.configs_from_gin(FLAGS.gin_file, bindings)
    after_config = config.data.augment_config()
    before_config = before.AugmentConfig(**dataclasses.asdict(after_config))
    source = data_lib.load_source(config.data.dataset)
    count = min(FLAGS.instances, source.num_images)
    batch = config.train.batch_size
    images = tf.constant(source.images[:count])
    seed = config.train.seed

    def before_dataset():
        def two_views(instance_id):
            image = images[instance_id]
            return {"images": tf.stack([before.augment_view(
                image, before.view_seed(seed, 0, instance_id, v), before_config)
                for v in range(2)]), "ids": instance_id}
        return (tf.data.Dataset.range(count).map(two_views, num_parallel_calls=threads or
                                                 tf.data.AUTOTUNE, deterministic=True)
                .batch(batch, drop_remainder=True))

    def after_dataset():
        return data_lib.make_train_dataset(source, after_config, global_batch_size=batch,
                                           epoch=0, seed=seed,
                                           num_parallel_calls=threads or None).take(count // batch)

    def rate(dataset):
        for _ in dataset.take(1):
            pass
        start = time.perf_counter()
        seen = 0
        for item in dataset:
            seen += int(item["ids"].shape[0])
        return seen / (time.perf_counter() - start)

    results = {}
    datasets = {}
    for threads in (int(t) for t in FLAGS.threads):
        for tag, build in (("before", before_dataset), ("after", after_dataset)):
            dataset = build()
            if threads == 1:
                options = tf.data.Options()
                options.threading.private_threadpool_size = 1
                dataset = dataset.with_options(options)
            datasets[(tag, threads)] = dataset
            results[(tag, threads)] = []
    for r in range(FLAGS.rounds):
        for key, dataset in datasets.items():
            results[key].append(rate(dataset))
        print(f"round {r + 1}: " + ", ".join(f"{t}/threads={n} {v[-1]:.0f}"
                                             for (t, n), v in results.items()), flush=True)
    rows = [{"code": t, "threads": n, "median_instances_per_s": statistics.median(v),
             "rounds": v} for (t, n), v in results.items()]
    print("| code | tf.data threads | instances/s, median (rounds) |\n|---|---|---|")
    for row in rows:
        per_round = ", ".join(f"{x:.0f}" for x in row["rounds"])
        print(f"| {row['code']} | {row['threads'] or 'autotune'} | "
              f"{row['median_instances_per_s']:.0f} ({per_round}) |")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump({"before_code": FLAGS.before_code, "instances": count, "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    app.run(main)
