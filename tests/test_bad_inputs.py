"""The table of bad inputs (WORKSPACE.md, "Bad inputs"): each gives one clear error that
names the input and what would be accepted, before any work, and leaves whatever is
already in the model_dir as it was."""

import hashlib
import os
import shutil

import numpy as np
import pytest

from tf_instcls import data as data_lib
from tf_instcls import parallel
from tf_instcls.eval import restore
from tf_instcls.training import loop

TINY_MODEL = loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=16)
TINY_TRAIN = loop.TrainConfig(epochs=1, batch_size=64, verbose=0)
TINY_METHOD = loop.FullConfig(num_hard_negatives=8)


def _npz(tmp_path, name="d.npz", n=200, **arrays):
    path = tmp_path / name
    rng = np.random.default_rng(0)
    arrays = arrays or {"x": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)}
    np.savez(path, **arrays)
    return str(path)


def _png(path, size, value=128):
    import tensorflow as tf

    image = np.full((size, size, 3), value, np.uint8)
    tf.io.write_file(str(path), tf.io.encode_png(image))


def _build(tmp_path, *, data=None, model=TINY_MODEL, train=TINY_TRAIN, method=TINY_METHOD,
           devices=1, model_dir=None):
    data = data or loop.DataConfig(dataset=f"npz:{_npz(tmp_path)}", image_size=16)
    return loop.build_state(model_dir or str(tmp_path / "run"), data, model,
                            loop.OptimConfig(), train, parallel.build_mesh(devices),
                            method=method, monitor=loop.MonitorConfig(every_epochs=0))


def _with(config, **changes):
    return type(config)(**{**config.__dict__, **changes})


# (id, the failing call given tmp_path, error type, what the message must say)
CASES = [
    ("unknown dataset scheme", lambda t: data_lib.load_source("ftp:cifar"),
     ValueError, r"ftp:cifar.*(digits|npz:PATH)"),
    ("missing npz file", lambda t: data_lib.load_source(f"npz:{t}/nope.npz"),
     FileNotFoundError, r"npz dataset not found: .*nope\.npz"),
    ("npz without x", lambda t: data_lib.load_source(
        f"npz:{_npz(t, images=np.zeros((4, 8, 8, 3), np.uint8))}"),
     ValueError, r"d\.npz: needs an array 'x' \(uint8 \[n, h, w, c\]\); has \['images'\]"),
    ("x of the wrong dtype", lambda t: data_lib.load_source(
        f"npz:{_npz(t, x=np.zeros((4, 8, 8, 3), np.float32))}"),
     ValueError, r"d\.npz: images must be uint8, got float32"),
    ("x of the wrong rank", lambda t: data_lib.load_source(
        f"npz:{_npz(t, x=np.zeros((4, 64), np.uint8))}"),
     ValueError, r"d\.npz: images must be \[n, h, w, 1 or 3\]; got shape \(4, 64\)"),
    ("empty folder", lambda t: data_lib.load_source(f"folder:{t}"),
     ValueError, r"no image files \(.*\.png.*\) below "),
    ("folder of non-images", lambda t: (
        (t / "a.txt").write_text("x"), (t / "b.png").write_text("not a png"),
        data_lib.load_source(f"folder:{t}")),
     ValueError, r"corrupt or undecodable image: .*b\.png.*--skip_corrupt_images"),
    ("missing folder", lambda t: data_lib.load_source(f"folder:{t}/none"),
     FileNotFoundError, r"image folder not found: .*none"),
    ("N smaller than the batch", lambda t: _build(
        t, train=_with(TINY_TRAIN, batch_size=256), data=loop.DataConfig(
            dataset=f"npz:{_npz(t, n=100)}", image_size=16)),
     ValueError, r"npz:.*d\.npz: batch size 256 is larger than the dataset \(100 images\); "
                 r"use TrainConfig.batch_size <= 100"),
    ("batch not divisible by the device count", lambda t: _build(
        t, train=_with(TINY_TRAIN, batch_size=62), devices=4),
     ValueError, r"batch_size 62 is not divisible by the 4 devices.*multiple of 4"),
    ("more devices than the batch", lambda t: _build(
        t, train=_with(TINY_TRAIN, batch_size=2), devices=4),
     ValueError, r"batch_size 2 is not divisible by the 4 devices.*\(or fewer devices\)"),
    ("num_sampled >= N", lambda t: _build(
        t, method=loop.SampledConfig(num_sampled=65536)),
     ValueError, r"N = 200 training images.*num_sampled = 65536 must be < N"),
    ("NPID noise >= N", lambda t: _build(
        t, model=_with(TINY_MODEL, use_head=False), devices=2,
        method=loop.NPIDConfig(noise=4096)),
     ValueError, r"N = 200 training images.*NPIDConfig.noise = 4096 must be < N"),
    ("K >= N", lambda t: _build(t, method=_with(TINY_METHOD, num_hard_negatives=200)),
     ValueError, r"N = 200 training images.*num_hard_negatives = 200 must be < N"),
    ("smoothing without K", lambda t: _build(
        t, method=_with(TINY_METHOD, num_hard_negatives=0, smoothing=0.2)),
     ValueError, r"smoothing = 0.2 needs hard negatives: set FullConfig.num_hard_negatives "
                 r">= 1"),
    ("zero epochs", lambda t: _build(t, train=_with(TINY_TRAIN, epochs=0)),
     ValueError, r"TrainConfig.epochs must be >= 1; got 0"),
    ("negative epochs", lambda t: _build(t, train=_with(TINY_TRAIN, epochs=-3)),
     ValueError, r"TrainConfig.epochs must be >= 1; got -3"),
    ("a binding of the wrong type", lambda t: _build(
        t, train=_with(TINY_TRAIN, epochs="10")),
     ValueError, r"wrong type.*TrainConfig.epochs must be int; got '10'"),
    ("an export dir that is not an export", lambda t: restore.load_encoder(str(t)),
     FileNotFoundError, r"is neither a pretraining model_dir \(no run_info.json\) nor an export"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error_before_any_work(case, tmp_path):
    _, call, error, message = case
    with pytest.raises(error, match=message):
        call(tmp_path)
    assert not (tmp_path / "run").exists()  # refused before the model_dir was made


def test_mixed_image_sizes_in_a_folder_are_accepted_and_resized(tmp_path):
    for i, size in enumerate((12, 20, 33)):
        _png(tmp_path / f"{i}.png", size, value=40 * i)
    source = data_lib.load_source(f"folder:{tmp_path}")
    assert source.num_images == 3
    image = source.load_fn(16)(np.int32(2)).numpy()
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8 and image[0, 0, 0] == 80


def _digest(model_dir):
    out = {}
    for root, _, files in os.walk(model_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, model_dir)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.mark.parametrize("what", ["another N", "another backbone"])
def test_a_model_dir_of_another_run_is_refused_and_left_intact(what, tiny_run, tmp_path):
    model_dir, configs = tiny_run
    before = _digest(model_dir)
    data, model = configs["data"], configs["model"]
    if what == "another N":
        data = _with(data, dataset=f"npz:{_npz(tmp_path, n=300)}")
        expected = r"holds a run with a different configuration.*num_instances"
    else:
        model = _with(model, backbone_width=8)
        expected = r"holds a run with a different configuration.*backbone_width.*\(4, 8\)"
    with pytest.raises(ValueError, match=expected + r".*Use a new --model_dir"):
        loop.build_state(model_dir, **{**configs, "data": data, "model": model},
                         mesh=parallel.build_mesh(2))
    assert _digest(model_dir) == before


def test_a_checkpoint_of_another_backbone_is_refused_by_the_evaluation_tools(tiny_run, tmp_path):
    import json

    model_dir = str(tmp_path / "copy")
    shutil.copytree(tiny_run[0], model_dir)
    info_path = os.path.join(model_dir, "run_info.json")
    with open(info_path) as f:
        info = json.load(f)
    info["backbone_width"] = 8  # the checkpoints hold width 4
    with open(info_path, "w") as f:
        json.dump(info, f)
    with pytest.raises(ValueError, match=r"ckpt-5: encoder variable \S+ has shape \[3, 3, 3, 4\] "
                                         r"in the checkpoint but \[3, 3, 3, 8\] in the model "
                                         r"built from run_info.json"):
        restore.load_encoder(model_dir)


def test_holdout_seed_fixes_the_split_across_training_seeds(tmp_path):
    """DataConfig.holdout_seed: runs of several training seeds hold out the same images
    (the run records the draw and the evaluation tools rebuild it); without it, each
    training seed draws its own, as before."""
    from tf_instcls.eval import common as ec

    rng = np.random.default_rng(0)
    path = _npz(tmp_path, x=rng.integers(0, 256, (200, 16, 16, 3), dtype=np.uint8),
                y=np.arange(200) % 4)
    source = data_lib.load_source(f"npz:{path}")
    held = {}
    for name, holdout_seed, train_seed in (("a", 0, 1), ("b", 0, 2), ("c", None, 1)):
        data = loop.DataConfig(dataset=f"npz:{path}", image_size=16, holdout_fraction=0.2,
                               holdout_seed=holdout_seed)
        state = _build(tmp_path, data=data, train=_with(TINY_TRAIN, seed=train_seed),
                       model_dir=str(tmp_path / name))
        held[name] = state.eval_source.images
        assert state.run_info["holdout_seed"] == (0 if holdout_seed == 0 else train_seed)
        info = type("M", (), {"restored": type("R", (), {"run_info": state.run_info})})
        assert ec.default_data_args(info, None, None, None, None)[3] == \
            state.run_info["holdout_seed"]
    np.testing.assert_array_equal(held["a"], held["b"])
    np.testing.assert_array_equal(held["a"], data_lib.split_holdout(source, 0.2, 0)[1].images)
    np.testing.assert_array_equal(held["c"], data_lib.split_holdout(source, 0.2, 1)[1].images)
    assert not np.array_equal(held["a"], held["c"])
    with pytest.raises(ValueError, match=r"DataConfig.holdout_seed must be None .* got -1"):
        _build(tmp_path, data=_with(data, holdout_seed=-1), model_dir=str(tmp_path / "d"))
