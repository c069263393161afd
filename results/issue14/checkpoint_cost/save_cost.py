"""Issue 14, item 2: why a checkpoint costs 0.4-0.9 s an epoch (shares.md). The same tensors
are saved as DTensor variables on a 1-device mesh (how tf_instcls holds every variable)
and as plain tf.Variables, with tf.train.CheckpointManager.save, alternating, and each
save is timed. It also counts how often TensorFlow traces a new tf.function for a save.

    python results/issue14/checkpoint_cost/save_cost.py \
        --checkpoint=/work/runs/r24s1_t015_budget28/seed3/checkpoints/ckpt-5518 \
        --shapes_out=results/issue14/checkpoint_cost/recipe_shapes.json > .../save_cost.txt
    python results/issue14/checkpoint_cost/save_cost.py \
        --shapes=results/issue14/checkpoint_cost/recipe_shapes.json      # from a clone

The shapes (and dtypes) are those of a recipe checkpoint's tensors; the values are zeros.
"""
import json
import math
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from tensorflow.experimental import dtensor  # noqa: E402
from tensorflow.python.checkpoint import functional_saver  # noqa: E402

flags.DEFINE_string("checkpoint", "", "A checkpoint prefix whose tensors' shapes to use.")
flags.DEFINE_string("shapes", "", "Or a JSON list of [shape, dtype] written by --shapes_out.")
flags.DEFINE_string("shapes_out", "", "Write the shapes read from --checkpoint here.")
flags.DEFINE_integer("saves", 8, "Timed saves of each kind (after one untimed save each).")
FLAGS = flags.FLAGS


def _shapes():
    if FLAGS.checkpoint:
        reader = tf.train.load_checkpoint(FLAGS.checkpoint)
        dtypes = reader.get_variable_to_dtype_map()
        shapes = [[list(shape), dtypes[name].name]
                  for name, shape in sorted(reader.get_variable_to_shape_map().items())
                  if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
                  and dtypes[name] != tf.string]
        if FLAGS.shapes_out:
            with open(FLAGS.shapes_out, "w") as f:
                json.dump(shapes, f)
        return shapes
    if not FLAGS.shapes:
        raise app.UsageError("give --checkpoint=PREFIX or --shapes=FILE")
    with open(FLAGS.shapes) as f:
        return json.load(f)


def main(argv):
    del argv
    shapes = _shapes()
    mesh = dtensor.create_mesh([("batch", 1)], devices=["CPU:0"])
    kinds = {
        "DTensor variables (1-device mesh)": [
            dtensor.DVariable(dtensor.call_with_layout(
                tf.zeros, dtensor.Layout.replicated(mesh, len(shape)), shape=shape,
                dtype=dtype)) for shape, dtype in shapes],
        "plain tf.Variables": [tf.Variable(tf.zeros(shape, dtype)) for shape, dtype in shapes],
    }
    traces = {"count": 0}
    original = functional_saver.MultiDeviceSaver.save

    def counting_save(self, *args, **kwargs):
        traces["count"] += self._num_unique_tasks > 1  # the branch that traces a new function
        return original(self, *args, **kwargs)

    functional_saver.MultiDeviceSaver.save = counting_save
    times = {name: [] for name in kinds}
    retraced = dict.fromkeys(kinds, 0)
    with tempfile.TemporaryDirectory() as tmp:
        managers = {name: tf.train.CheckpointManager(tf.train.Checkpoint(v=variables),
                                                     os.path.join(tmp, str(i)), max_to_keep=3)
                    for i, (name, variables) in enumerate(kinds.items())}
        for manager in managers.values():
            manager.save(checkpoint_number=0)  # untimed
        for i in range(1, FLAGS.saves + 1):
            for name, manager in managers.items():  # alternating
                before = traces["count"]
                start = time.perf_counter()
                manager.save(checkpoint_number=i)
                times[name].append(time.perf_counter() - start)
                retraced[name] += traces["count"] - before
        size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in
                   os.walk(os.path.join(tmp, "0")) for f in files if f"ckpt-{FLAGS.saves}." in f)
    elements = sum(math.prod(shape) for shape, _ in shapes)
    print(f"{len(shapes)} tensors, {elements:,} elements, {size / 2**20:.1f} MiB a checkpoint; "
          f"{FLAGS.saves} timed saves of each kind, alternating")
    print("| variables | median s a save (range) | saves that traced a new tf.function |")
    print("|---|---|---|")
    for name in kinds:
        print(f"| {name} | {statistics.median(times[name]):.3f} "
              f"({min(times[name]):.3f}-{max(times[name]):.3f}) | {retraced[name]} of "
              f"{FLAGS.saves} |")
    ratio = statistics.median(times[list(kinds)[0]]) / statistics.median(times[list(kinds)[1]])
    print(f"\nDTensor / plain: {ratio:.1f} x")


if __name__ == "__main__":
    app.run(main)
