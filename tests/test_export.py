"""Issue 7: SavedModel export of a short run, reloaded in a fresh process; signatures,
bad inputs, the README's REST requests, fine-tuning the reloaded encoder, embed.py."""

import base64
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import export, parallel
from tf_instcls.data import ImageSource
from tf_instcls.parallel.features import extract_features
from tf_instcls.training import loop

from helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(__file__))
IMAGE_SIZE = 16  # the tiny_run fixture's (conftest.py)



def _odd_sized_images(n=6, seed=0):
    """Images of a size the model was not trained at (resized inside the signature)."""
    return np.random.RandomState(seed).randint(0, 256, (n, 23, 29, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """The tiny run exported; the in-memory encoder's outputs on the mesh."""
    model_dir, c = tiny_run
    mesh = parallel.build_mesh(2)
    state = loop.build_state(model_dir, **c, mesh=mesh)
    images = _odd_sized_images()
    source = ImageSource(name="odd", num_images=len(images), image_size=(23, 29),
                         images=images)
    in_memory = extract_features(state.encoder, source, IMAGE_SIZE, mesh, batch_size=2)
    restored = export.restore_encoder(model_dir)
    base = str(tmp_path_factory.mktemp("export"))
    path = export.export_encoder(restored.encoder, base,
                                 image_size=restored.image_size, step=restored.step,
                                 run_info=restored.run_info)
    return dict(model_dir=model_dir, export_dir=path, images=images, in_memory=in_memory,
                step=state.step)


def test_export_layout_is_versioned_and_holds_no_classifier(run):
    base, version = os.path.split(run["export_dir"])
    assert version == str(run["step"]) and os.listdir(base) == [version]  # no temp left
    assert os.path.exists(os.path.join(run["export_dir"], "saved_model.pb"))
    reader = tf.train.load_checkpoint(os.path.join(run["export_dir"], "variables",
                                                   "variables"))
    shapes = reader.get_variable_to_shape_map()
    n = loop.data_lib.load_source("digits").num_images
    assert not any(shape and shape[0] >= n for shape in shapes.values())  # W [N, D] absent
    info = export.load_export_info(run["export_dir"])
    assert info["image_size"] == IMAGE_SIZE and info["embedding_dim"] == 16
    with pytest.raises(FileExistsError, match="exists"):
        export.export_encoder(keras.Model(), base, image_size=IMAGE_SIZE, version=version)


@pytest.mark.slow
def test_reloaded_in_fresh_process_equals_in_memory_model(run, tmp_path):
    out = tmp_path / "served.npz"
    np.save(tmp_path / "images.npy", run["images"])
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "x = np.load(sys.argv[2])\n"
        "a = m.signatures['serving_default'](images=tf.constant(x))\n"
        "png = [tf.io.encode_png(i).numpy() for i in x]\n"
        "b = m.signatures['serve_bytes'](image_bytes=tf.constant(png))\n"
        "np.savez(sys.argv[3], emb=a['embedding'], feat=a['features'],"
        " emb_bytes=b['embedding'], feat_bytes=b['features'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, run["export_dir"],
                           str(tmp_path / "images.npy"), str(out)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = np.load(out)
    ref = run["in_memory"]
    emb = ref["embedding"] / np.linalg.norm(ref["embedding"], axis=1, keepdims=True)
    for key in ("emb", "emb_bytes"):
        np.testing.assert_allclose(served[key], emb, atol=1e-5, rtol=1e-5)
    for key in ("feat", "feat_bytes"):
        np.testing.assert_allclose(served[key], ref["features"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served["emb"], axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_saved_model_cli_lists_both_signatures(run):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--all", "--dir", run["export_dir"]], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "signature_def['serving_default']" in proc.stdout
    assert "signature_def['serve_bytes']" in proc.stdout
    assert "inputs['images']" in proc.stdout and "DT_UINT8" in proc.stdout
    assert "inputs['image_bytes']" in proc.stdout and "DT_STRING" in proc.stdout


@pytest.fixture(scope="module")
def signatures(run):
    return tf.saved_model.load(run["export_dir"]).signatures


@pytest.mark.parametrize("bad, message", [
    (np.zeros([1, 8, 8, 3], np.float32), "expected to be a uint8 tensor but is a float"),
    (np.zeros([1, 8, 8, 1], np.uint8), r"images \[1,8,8,1\] is not compatible with expected "
                                       r"shape \[\?,\?,\?,3\]"),
    (np.zeros([1, 8, 8, 4], np.uint8), r"\[1,8,8,4\] is not compatible"),
    (np.zeros([8, 8, 3], np.uint8), r"images \[8,8,3\] is not compatible"),
    (np.zeros([1, 0, 8, 3], np.uint8), "height and width > 0"),
])
def test_bad_images_are_rejected_by_the_signature(signatures, bad, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        signatures["serving_default"](images=tf.constant(bad))


def test_bad_bytes_are_rejected_by_the_signature(signatures):
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        signatures["serve_bytes"](image_bytes=tf.constant([b"not an image"]))


def _readme_requests():
    text = open(os.path.join(ROOT, "README.md")).read()
    serving = text[text.index("## Serving"):]
    blocks = re.findall(r"```json\n(.*?)```", serving, re.S)
    assert len(blocks) == 2
    return [json.loads(block) for block in blocks]


def _rest_inputs(instances):
    """TF Serving's REST 'row' format for one named input: a list of values, binary
    values as {"b64": ...}."""
    if isinstance(instances[0], dict) and "b64" in instances[0]:
        return tf.constant([base64.b64decode(item["b64"]) for item in instances])
    return tf.constant(np.asarray(instances, np.uint8))


def test_readme_rest_requests_are_accepted_by_the_signatures(signatures):
    requests = _readme_requests()
    outputs = []
    for request in requests:
        fn = signatures[request["signature_name"]]
        (name,) = fn.structured_input_signature[1]
        out = fn(**{name: _rest_inputs(request["instances"])})
        assert out["embedding"].shape == (1, 16)
        outputs.append(out["embedding"].numpy())
    # the PNG in the README encodes exactly the raw pixels of the other request
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)


def test_reloaded_keras_encoder_fine_tunes(run):
    path = os.path.join(run["export_dir"], "assets.extra", "encoder.keras")
    encoder = keras.saving.load_model(path)
    rng = np.random.RandomState(0)
    x = tf.constant(rng.normal(size=[32, IMAGE_SIZE, IMAGE_SIZE, 3]).astype(np.float32))
    y = tf.constant(rng.randint(0, 4, 32))
    head = keras.layers.Dense(4)
    optimizer = keras.optimizers.SGD(0.05)
    before = [w.numpy().copy() for w in encoder.trainable_weights]
    losses = []
    for _ in range(8):
        with tf.GradientTape() as tape:
            out = encoder(x, training=True)  # backbone and head both get gradients
            logits = head(tf.concat([out["features"], out["embedding"]], axis=1))
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True))
        variables = encoder.trainable_weights + head.trainable_weights
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses
    changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, encoder.trainable_weights)]
    assert all(changed)


def test_tfsm_layer_exposes_trainable_weights_with_gradients(run):
    layer = keras.layers.TFSMLayer(run["export_dir"], call_endpoint="serving_default",
                                   trainable=True)
    assert len(layer.trainable_weights) > 0
    images = tf.constant(run["images"])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(images)["features"])
    grads = tape.gradient(loss, layer.trainable_weights)
    assert any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_restore_refuses_mismatched_or_missing_checkpoints(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="run_info.json is missing"):
        export.restore_encoder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="available"):
        export.restore_encoder(run["model_dir"], checkpoint="999999")
    other = tmp_path / "other"
    other.mkdir()
    info = json.load(open(os.path.join(run["model_dir"], "run_info.json")))
    info["backbone_width"] = 8  # the checkpoint holds width-4 weights
    json.dump(info, open(other / "run_info.json", "w"))
    os.symlink(os.path.join(run["model_dir"], "checkpoints"), other / "checkpoints")
    with pytest.raises(ValueError, match="has shape .* in the checkpoint"):
        export.restore_encoder(str(other))


@pytest.mark.slow
def test_embed_tool_writes_embeddings_and_answers_queries(run, tmp_path):
    images = _odd_sized_images(8, seed=1)
    np.savez(tmp_path / "data.npz", x=images, y=np.arange(8) % 2)
    query = tmp_path / "query.png"
    query.write_bytes(tf.io.encode_png(images[3]).numpy())
    out_dir = tmp_path / "emb"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "embed.py"),
           f"--export_dir={os.path.dirname(run['export_dir'])}",
           f"--dataset=npz:{tmp_path / 'data.npz'}", f"--out_dir={out_dir}", "--batch_size=3",
           f"--query={query}", "--top_k=3", f"--grid={tmp_path / 'grid.png'}"]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    emb = np.load(out_dir / "embeddings.npy")
    assert emb.shape == (8, 16) and np.load(out_dir / "labels.npy").tolist() == [0, 1] * 4
    served = tf.saved_model.load(run["export_dir"]).signatures["serving_default"](
        images=tf.constant(images))["embedding"].numpy()
    np.testing.assert_allclose(emb, served, atol=1e-5)
    result = json.load(open(out_dir / "queries.json"))[0]["neighbours"]
    assert result[0]["id"] == 3 and result[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert os.path.getsize(tmp_path / "grid.png") > 1000

    bad = subprocess.run(cmd[:3] + [f"--out_dir={tmp_path / 'none'}"], env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--dataset is required" in bad.stderr


@pytest.mark.slow
def test_export_binary_versions_and_refuses_to_overwrite(run, tmp_path):
    base = tmp_path / "models" / "encoder"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "export.py"),
           f"--model_dir={run['model_dir']}", f"--export_dir={base}", "--version=7"]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"to {base / '7'}" in proc.stdout
    assert export.resolve_export_dir(str(base)) == str(base / "7")
    again = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "exists; pass overwrite=True (--overwrite)" in again.stderr


@pytest.mark.slow
def test_the_wheel_installs_and_every_console_script_answers_help(tmp_path):
    """pip wheel . -> install the wheel alone (no deps: this environment has them) ->
    every console script it declares runs --help; the package reports its version."""
    import configparser
    import glob
    import zipfile

    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps",
                            "--no-build-isolation", "-w", str(wheels), "-q"],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = glob.glob(str(wheels / "tf_instcls-*.whl"))
    import tf_instcls

    assert f"tf_instcls-{tf_instcls.__version__}-" in os.path.basename(wheel)
    with zipfile.ZipFile(wheel) as z:
        files = names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith("dist-info/METADATA"))).decode()
        entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert any(n.endswith("dist-info/licenses/LICENSE") or n.endswith("dist-info/LICENSE")
               for n in names)
    assert "License: Apache-2.0" in meta and "Apache Software License" in meta
    # the gin configs ship in the package, where the installed tools look for them
    assert "tf_instcls/gin/digits.gin" in names and "tf_instcls/gin/ablations/npid.gin" in names
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                                "--target", str(target), wheel],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    scripts = configparser.ConfigParser()
    scripts.read_string(entry)
    names = list(scripts["console_scripts"])
    assert len(names) >= 8 and "tf-instcls-train" in names
    env = dict(subprocess_env(), PYTHONPATH=str(target))  # the installed copy, not ROOT
    for name in names:
        done = subprocess.run([str(target / "bin" / name), "--help"], env=env,
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        # absl prints the usage and exits with 1 on --help; an import error would not
        assert done.returncode in (0, 1) and "Traceback" not in done.stderr, \
            (name, done.stderr[-2000:])
        assert "[flags]" in done.stdout and "--helpfull" in done.stdout, (name, done.stdout)
    # the installed binaries find the installed configs (not this checkout's gin/); the
    # binaries are tf_instcls.cli there; neither tools/ nor benchmarks/ is shipped
    assert (target / "tf_instcls" / "cli" / "train.py").exists()
    assert not (target / "tools").exists() and not (target / "benchmarks").exists()
    assert not any(n.startswith(("tools/", "benchmarks/")) for n in files)
    found = subprocess.run([sys.executable, "-c", "from tf_instcls.cli import gin_config; "
                            "print(gin_config.GIN_DIR)"], env=env, capture_output=True,
                           text=True, timeout=300, cwd=tmp_path)
    gin_dir = found.stdout.strip()
    assert gin_dir.startswith(str(target)), (gin_dir, found.stderr[-2000:])
    assert os.path.exists(os.path.join(gin_dir, "digits.gin"))
    parsed = subprocess.run([str(target / "bin" / "tf-instcls-train"), "--helpfull"], env=env,
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    flat = "".join(parsed.stdout.split())  # absl wraps long defaults over lines
    assert os.path.join(gin_dir, "digits.gin") in flat  # the default --gin_file
