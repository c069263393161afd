r"""Where the pretraining step goes, per precision: parts timed side by side in one process.

For each precision a state is built from the gin config on a 1-device mesh (the recipe's
layout) and these functions are timed on one fixed batch (no input cost), interleaved
over rounds:

  step          the real train step (encoder, the method's loss over W, optimizer, BN
                guard, W's projection): what an epoch runs
  encoder       forward + backward + SGD of the same encoder on the mesh, loss = mean of
                the embedding squared (no W, no optimizer slots)
  encoder_fwd   the encoder's training-mode forward pass alone, on the mesh
  plain         forward + backward + SGD of a fresh encoder of the same shape built
                outside DTensor (plain Keras variables): what ``bench_backbone.py`` times

With ``--profile`` the first part of each precision is also run under TensorFlow's
profiler and its self time is reported per op type (convolutions, BN's elementwise
ops, casts, ...).

  python benchmarks/bench_step_parts.py --gin_file=gin/cifar10_subset_npz.gin \
      --precisions=float32,mixed_bfloat16 --rounds=3 --steps=10 --json=OUT.json
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

from absl import app, flags

from tf_instcls.cli import gin_config

import harness

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [os.path.join(harness.GIN_DIR, "cifar10_subset_npz.gin")],
                          "gin configs.")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings.")
flags.DEFINE_string("dataset", f"npz:{harness.CIFAR_SUBSET}", "DataConfig.dataset.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "ModelConfig.precision values.")
flags.DEFINE_list("parts", ["step", "encoder", "encoder_fwd", "plain"], "Parts to time.")
flags.DEFINE_integer("steps", 10, "Timed calls per part and round.", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_bool("profile", False, "Also profile 5 calls of each precision's first part "
                  "with TensorFlow's profiler and report self time per op type.")
flags.DEFINE_string("json", None, "Write the result here.")

PARTS = ("step", "encoder", "encoder_fwd", "plain")


def _parts(base, precision):
    import dataclasses

    import keras
    import tensorflow as tf

    from tf_instcls import data as data_lib
    from tf_instcls import models, parallel
    from tf_instcls.parallel import layouts
    from tf_instcls.training import loop
    from tf_instcls.training.step import make_train_step

    config = dataclasses.replace(base, model=dataclasses.replace(base.model, precision=precision))
    mesh = parallel.build_mesh(None)
    state = loop.build_state(tempfile.mkdtemp(prefix="bench_parts_"), config=config, mesh=mesh)
    batch = next(iter(data_lib.make_train_dataset(
        state.train_source, config.data.augment_config(),
        global_batch_size=config.train.batch_size, epoch=0, seed=config.train.seed)))
    images = layouts.pack_local_batch(batch["images"], layouts.batch_layout(mesh, 5))
    ids = layouts.pack_local_batch(batch["ids"], layouts.batch_layout(mesh, 1))
    size = config.data.image_size
    views = layouts.pack_local_batch(
        tf.reshape(batch["images"], [-1, size, size, 3]), layouts.batch_layout(mesh, 4))

    step = make_train_step(state.encoder, state.classifier, state.optimizer, lambda s: 0.01,
                           state.method)
    handles = [layouts.variable_handle(v) for v in state.encoder.trainable_variables]

    encoder_step = harness.encoder_sgd_step(state.encoder, handles)

    @tf.function
    def encoder_fwd(x):
        return tf.reduce_mean(tf.cast(state.encoder(x, training=True)["embedding"], tf.float32))

    keras.utils.set_random_seed(0)
    plain = models.build_encoder(config.model.backbone, size,
                                 head_hidden_dim=config.model.head_hidden_dim,
                                 backbone_width=config.model.backbone_width,
                                 precision=precision)
    plain_x = tf.constant(tf.reshape(batch["images"], [-1, size, size, 3]))
    plain_step = harness.encoder_sgd_step(plain, plain.trainable_variables)

    calls = {
        "step": lambda: parallel.to_numpy(step(images, ids, state.global_step)["loss"]),
        "encoder": lambda: parallel.to_numpy(encoder_step(views)),
        "encoder_fwd": lambda: parallel.to_numpy(encoder_fwd(views)),
        "plain": lambda: plain_step(plain_x).numpy(),
    }
    calls = {k: v for k, v in calls.items() if k in FLAGS.parts}
    for call in calls.values():  # trace and warm up
        call()
        call()
    return calls


def main(argv):
    del argv
    unknown = set(FLAGS.parts) - set(PARTS)
    if unknown:
        raise app.UsageError(f"--parts: unknown {sorted(unknown)}; accepted: {PARTS}")
    base = gin_config.configs_from_gin(
        FLAGS.gin_file, [*FLAGS.gin_bindings, f"DataConfig.dataset = {FLAGS.dataset!r}"])
    calls = {p: _parts(base, p) for p in FLAGS.precisions}
    times = {(p, k): [] for p in calls for k in calls[p]}
    for r in range(FLAGS.rounds):
        for (p, k) in times:
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                calls[p][k]()
            times[(p, k)].append(1000 * (time.perf_counter() - start) / FLAGS.steps)
        print(f"round {r + 1}/{FLAGS.rounds}: " + ", ".join(
            f"{p}/{k} {v[-1]:.0f} ms" for (p, k), v in times.items()), flush=True)
    rows = []
    for (p, k), v in times.items():
        rows.append({"precision": p, "part": k, "median_ms": statistics.median(v),
                     "min_ms": min(v), "max_ms": max(v), "rounds_ms": v})
    profiles = ({p: harness.op_self_times(calls[p][FLAGS.parts[0]]) for p in calls}
                if FLAGS.profile else {})
    for p, ops in profiles.items():
        busy = sum(t for k, t in ops.items() if k != "IDLE")
        print(f"{p} / {FLAGS.parts[0]}, self time by op type (share of non-idle time):")
        for k, t in sorted(ops.items(), key=lambda kv: -kv[1])[:14]:
            if k != "IDLE":
                print(f"  {k:34s} {t / 1e3:8.1f} ms  {100 * t / busy:5.1f}%")
    result = {"gin_file": FLAGS.gin_file, "gin_bindings": FLAGS.gin_bindings,
              "steps": FLAGS.steps, "rounds": FLAGS.rounds, "rows": rows,
              "profiles_us": profiles}
    print(f"{'precision':16s} {'part':12s} {'median ms':>10s} {'range':>14s}")
    for row in rows:
        print(f"{row['precision']:16s} {row['part']:12s} {row['median_ms']:10.1f} "
              f"{row['min_ms']:6.1f}-{row['max_ms']:.1f}")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
