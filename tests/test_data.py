"""Sources, stable ids, augmentation (eager == tf.data), pipelines and their resume."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import data as data_lib
from tf_instcls.data import sources


def _npz(tmp_path, n=40, size=12, channels=3, labels=True):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    path = tmp_path / "d.npz"
    if labels:
        np.savez(path, x=x, y=np.arange(n) % 4)
    else:
        np.savez(path, x=x)
    return str(path), x


def test_digits_is_embedded_rgb_with_labels():
    src = data_lib.load_source("digits")
    assert src.num_images == 1797 and src.images.shape == (1797, 32, 32, 3)
    assert src.images.dtype == np.uint8 and src.num_classes == 10


def test_npz_source_keeps_array_order_as_ids(tmp_path):
    path, x = _npz(tmp_path, channels=1)
    src = data_lib.load_source(f"npz:{path}")
    load = src.load_fn(None)
    for i in (0, 7, 39):
        np.testing.assert_array_equal(load(tf.constant(i)).numpy()[..., 0], x[i, ..., 0])
    assert src.labels.tolist() == (np.arange(40) % 4).tolist()


@pytest.mark.parametrize("spec,pattern", [
    ("npz:/nonexistent.npz", "not found"),
    ("folder:/nonexistent", "not found"),
    ("imagenet", "unknown dataset spec"),
    ("tfds:", "unknown dataset spec"),
])
def test_bad_specs_are_rejected(spec, pattern):
    with pytest.raises((ValueError, FileNotFoundError), match=pattern):
        data_lib.load_source(spec)


def test_npz_with_wrong_dtype_is_rejected(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.zeros((3, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        data_lib.load_source(f"npz:{tmp_path / 'f.npz'}")


def _folder(tmp_path, corrupt=False):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        os.makedirs(root / cls)
        for i in range(3):
            img = rng.integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)
            tf.io.write_file(str(root / cls / f"{i}.png"), tf.io.encode_png(img))
    if corrupt:
        (root / "cat" / "1.png").write_bytes(b"not an image at all")
    return root


def test_folder_ids_labels_and_native_sizes(tmp_path):
    src = data_lib.load_source(f"folder:{_folder(tmp_path)}")
    assert src.num_images == 6 and src.class_names == ["cat", "dog"]
    assert src.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert src.load_fn(None)(tf.constant(2)).shape == (12, 14, 3)


def test_corrupt_image_fails_naming_the_file_or_is_skipped(tmp_path):
    root = _folder(tmp_path, corrupt=True)
    with pytest.raises(ValueError, match=r"corrupt or undecodable image: .*cat/1\.png"):
        data_lib.load_source(f"folder:{root}")
    src = data_lib.load_source(f"folder:{root}", skip_corrupt=True)
    assert src.num_images == 5 and src.skipped == [os.path.join("cat", "1.png")]
    assert [os.path.basename(p) for p in src.paths] == ["0.png", "2.png", "0.png", "1.png",
                                                        "2.png"]


def test_holdout_is_stratified_deterministic_and_disjoint(tmp_path):
    src = data_lib.load_source("digits")
    train, held = data_lib.split_holdout(src, 0.2, seed=3)
    again, _ = data_lib.split_holdout(src, 0.2, seed=3)
    assert train.num_images + held.num_images == 1797
    np.testing.assert_array_equal(train.images, again.images)
    counts = np.bincount(held.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38


CONFIG = data_lib.AugmentConfig(image_size=16, blur_prob=0.5)


def test_augmentation_is_the_same_eagerly_and_in_tf_data():
    """big_vision's lesson: preprocessing must agree eagerly and inside tf.data."""
    from tf_instcls.data.augment import augment_view, view_seed

    image = tf.constant(np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8))
    eager = [augment_view(image, view_seed(7, 2, i, v), CONFIG).numpy()
             for i in range(3) for v in range(2)]
    ds = tf.data.Dataset.from_tensor_slices([(i, v) for i in range(3) for v in range(2)])
    ds = ds.map(lambda iv: augment_view(image, view_seed(7, 2, iv[0], iv[1]), CONFIG))
    graph = [x.numpy() for x in ds]
    for a, b in zip(eager, graph):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert eager[0].shape == (16, 16, 3)
    assert not np.allclose(eager[0], eager[1]), "two views of an instance must differ"


def test_bad_augment_config():
    with pytest.raises(ValueError, match="crop_scale"):
        data_lib.AugmentConfig(crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="blur_prob"):
        data_lib.AugmentConfig(blur_prob=1.5)


def test_epoch_covers_every_id_once_and_resume_replays_exactly(tmp_path):
    path, _ = _npz(tmp_path, n=40)
    src = data_lib.load_source(f"npz:{path}")
    full = list(data_lib.make_train_dataset(src, CONFIG, global_batch_size=8, epoch=1, seed=5))
    ids = np.concatenate([b["ids"].numpy() for b in full])
    assert sorted(ids.tolist()) == list(range(40))
    resumed = list(data_lib.make_train_dataset(src, CONFIG, global_batch_size=8, epoch=1,
                                               seed=5, start_step=3))
    assert len(resumed) == 2
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a["ids"], b["ids"])
        np.testing.assert_allclose(a["images"], b["images"])
    other = list(data_lib.make_train_dataset(src, CONFIG, global_batch_size=8, epoch=2, seed=5))
    assert not np.array_equal(ids, np.concatenate([b["ids"].numpy() for b in other]))


def test_several_epochs_in_one_dataset_are_the_per_epoch_datasets_back_to_back(tmp_path):
    # n = 44 with batch 8: 5 steps per epoch and 4 images dropped, differently each epoch
    path, _ = _npz(tmp_path, n=44)
    src = data_lib.load_source(f"npz:{path}")
    args = dict(global_batch_size=8, seed=5, process_index=1, process_count=2)
    joined = list(data_lib.make_train_dataset(src, CONFIG, epoch=1, start_step=2,
                                              last_epoch=4, **args))
    apart = [b for e in (1, 2, 3) for b in data_lib.make_train_dataset(
        src, CONFIG, epoch=e, start_step=2 if e == 1 else 0, **args)]
    assert len(joined) == len(apart) == 3 + 5 + 5
    for a, b in zip(joined, apart):
        np.testing.assert_array_equal(a["ids"], b["ids"])
        np.testing.assert_array_equal(a["images"], b["images"])
    with pytest.raises(ValueError, match="last_epoch"):
        data_lib.make_train_dataset(src, CONFIG, epoch=3, last_epoch=3, **args)


def test_processes_split_each_global_batch_without_overlap_or_gaps(tmp_path):
    path, _ = _npz(tmp_path, n=40)
    src = data_lib.load_source(f"npz:{path}")
    whole = [b["ids"].numpy() for b in
             data_lib.make_train_dataset(src, CONFIG, global_batch_size=8, epoch=0)]
    parts = [[b["ids"].numpy() for b in data_lib.make_train_dataset(
        src, CONFIG, global_batch_size=8, epoch=0, process_index=p, process_count=2)]
        for p in range(2)]
    for step, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), batch)


def test_eval_dataset_pads_to_full_batches_in_id_order():
    src = data_lib.load_source("digits").subset(np.arange(10), "ten")
    batches = list(data_lib.make_eval_dataset(src, 32, batch_size=4))
    ids = np.concatenate([b["ids"].numpy() for b in batches])
    valid = np.concatenate([b["valid"].numpy() for b in batches])
    assert ids.tolist()[:10] == list(range(10)) and valid.sum() == 10 and len(ids) == 12
    assert sources.ImageSource  # public type


@pytest.mark.slow
def test_synthetic_images_are_deterministic_distinct_and_stored_nowhere():
    import time

    start = time.perf_counter()
    huge = data_lib.load_source("synthetic:1000000000:16")
    assert time.perf_counter() - start < 1.0  # nothing generated or stored up front
    assert huge.num_images == 10**9 and huge.images is None and huge.labels is None
    load = huge.load_fn(None)
    np.testing.assert_array_equal(load(np.int64(999_999_999)).numpy(),
                                  load(np.int64(999_999_999)).numpy())
    source = data_lib.load_source("synthetic:2000:16:10")
    np.testing.assert_array_equal(source.labels, np.arange(2000) % 10)
    first = list(data_lib.make_train_dataset(source, CONFIG, global_batch_size=500, epoch=0))
    again = list(data_lib.make_train_dataset(source, CONFIG, global_batch_size=500, epoch=0))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["images"], b["images"])
    raw = source.load_fn(None)
    images = [raw(np.int64(i)).numpy() for i in range(2000)]
    assert images[0].shape == (16, 16, 3) and images[0].dtype == np.uint8
    assert len({image.tobytes() for image in images}) == 2000  # every id its own image
    sub = source.subset(np.array([7, 3]), "sub")
    np.testing.assert_array_equal(sub.load_fn(None)(np.int64(1)).numpy(), images[3])


@pytest.mark.parametrize("spec, message", [
    ("synthetic:ten", r"expected 'synthetic:N\[:SIZE\[:C\]\]' with integers"),
    ("synthetic:100:4", r"needs N >= 1, SIZE >= 8 and 2 <= C <= N; got N = 100, SIZE = 4"),
    ("synthetic:100:16:1", r"C = 1"),
    ("synthetic:1:2:3:4", r"expected 'synthetic:N\[:SIZE\[:C\]\]'"),
])
def test_bad_synthetic_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        data_lib.load_source(spec)


@pytest.mark.slow
def test_a_run_on_synthetic_data_trains_and_monitors_knn(tmp_path):
    from tf_instcls import parallel, pretrain
    from tf_instcls.training import loop

    configs = dict(
        data=loop.DataConfig(dataset="synthetic:320:16:4", image_size=16),
        model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=16),
        optim=loop.OptimConfig(warmup_epochs=0),
        train=loop.TrainConfig(epochs=1, batch_size=64, verbose=0),
        method=loop.FullConfig(num_hard_negatives=8), monitor=loop.MonitorConfig(k=10))
    logs = pretrain.run_pretraining(str(tmp_path), **configs, mesh=parallel.build_mesh(2))
    assert logs["step"] == 4 and np.isfinite(logs["loss"]) and 0 <= logs["knn_top1"] <= 100


def test_one_view_is_view_zero_of_the_pair(tmp_path):
    """views=1 (NPID's single view) gives [b, 1, ...]: the first of the two views."""
    path, _ = _npz(tmp_path, n=24)
    src = data_lib.load_source(f"npz:{path}")
    args = dict(global_batch_size=8, epoch=2, seed=3)
    pairs = list(data_lib.make_train_dataset(src, CONFIG, **args))
    singles = list(data_lib.make_train_dataset(src, CONFIG, views=1, **args))
    assert len(pairs) == len(singles) == 3
    for a, b in zip(pairs, singles):
        assert a["images"].shape[1] == 2 and b["images"].shape[1] == 1
        np.testing.assert_array_equal(a["ids"], b["ids"])
        np.testing.assert_array_equal(a["images"][:, :1], b["images"])
    with pytest.raises(ValueError, match="views must be 1 or 2; got 3"):
        data_lib.make_train_dataset(src, CONFIG, views=3, **args)


@pytest.mark.parametrize("method", ["full", "npid"])
@pytest.mark.slow
def test_a_one_view_run_trains(tmp_path, method):
    from tf_instcls import parallel, pretrain
    from tf_instcls.training import loop

    configs = dict(
        data=loop.DataConfig(dataset="synthetic:256:16:4", image_size=16, views=1),
        model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=16),
        optim=loop.OptimConfig(warmup_epochs=0),
        train=loop.TrainConfig(epochs=2, batch_size=64, verbose=0),
        method={"full": loop.FullConfig(num_hard_negatives=8),
                "npid": loop.NPIDConfig(noise=32, temperature=0.15),
                "simclr": loop.SimCLRConfig(temperature=0.15)}[method],
        monitor=loop.MonitorConfig(k=10))
    logs = pretrain.run_pretraining(str(tmp_path), **configs, mesh=parallel.build_mesh(2))
    # 216 training images (the rest held out): 3 steps an epoch
    assert logs["step"] == 6 and np.isfinite(logs["loss"]) and 0 <= logs["knn_top1"] <= 100


def test_simclr_needs_two_views():
    from tf_instcls.training import config as config_lib
    from tf_instcls.training import loop

    run = config_lib.RunConfig(data=loop.DataConfig(views=1),
                               method=loop.SimCLRConfig())
    with pytest.raises(ValueError, match="'simclr' needs DataConfig.views >= 2; got 1"):
        config_lib.validate(run)


def test_train_image_size_sets_the_views_side_only(tmp_path):
    """DataConfig.train_image_size: training views at that side, the rest of the
    augmentation as before (the same crop boxes, resized smaller); eval views keep
    image_size."""
    from tf_instcls.training import loop

    # smooth images (per-image colour ramps), so that resizing twice ~ resizing once
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 12)[None, :, None, None] * np.linspace(0, 1, 12)[None, None, :, None]
    x = (255 * ramp * rng.uniform(0.3, 1.0, (24, 1, 1, 3))).astype(np.uint8)
    path = str(tmp_path / "smooth.npz")
    np.savez(path, x=x)
    src = data_lib.load_source(f"npz:{path}")
    base = loop.DataConfig(dataset=f"npz:{path}", image_size=12, crop_scale=(0.3, 1.0))
    small = loop.DataConfig(dataset=f"npz:{path}", image_size=12, crop_scale=(0.3, 1.0),
                            train_image_size=8)
    assert base.augment_config().image_size == 12
    config = small.augment_config()
    assert config.image_size == 8 and config.crop_scale == (0.3, 1.0)
    assert config == dataclasses.replace(base.augment_config(), image_size=8)
    args = dict(global_batch_size=8, epoch=1, seed=5)
    batch = next(iter(data_lib.make_train_dataset(src, config, **args)))
    assert batch["images"].shape == (8, 2, 8, 8, 3)
    evals = next(iter(data_lib.make_eval_dataset(src, 12, batch_size=8)))
    assert evals["images"].shape == (8, 12, 12, 3)
    # the same crop box, resized to 8 instead of 12: the 12 px view resized to 8 is close
    # (antialiased resizes of one box, not bitwise equal)
    big = next(iter(data_lib.make_train_dataset(src, base.augment_config(), **args)))
    np.testing.assert_array_equal(big["ids"], batch["ids"])
    down = tf.image.resize(tf.reshape(big["images"], [-1, 12, 12, 3]), [8, 8],
                           antialias=True).numpy().reshape(8, 2, 8, 8, 3)
    err = np.abs(down - batch["images"].numpy()).mean()
    spread = np.abs(batch["images"].numpy() - batch["images"].numpy().mean()).mean()
    assert err < 0.1 * spread, (err, spread)


def test_train_size_schedule_stages_and_bad_schedules():
    """DataConfig.train_size_schedule: the stages it gives, and every bad schedule
    refused with what would be accepted."""
    from tf_instcls.training import config as config_lib
    from tf_instcls.training import loop

    data = loop.DataConfig(image_size=32, train_size_schedule=((0, 16), (64, 24)))
    assert data.train_stages(128) == [(0, 64, 16), (64, 128, 24)]
    assert data.train_stages(50) == [(0, 50, 16)]
    assert data.train_side == 24 and not data.trains_at_image_size
    assert data.augment_config(16).image_size == 16 and data.augment_config().image_size == 24
    assert loop.DataConfig(image_size=32).train_stages(5) == [(0, 5, 32)]
    assert loop.DataConfig(image_size=32).trains_at_image_size
    assert not loop.DataConfig(image_size=32, train_image_size=24).trains_at_image_size
    assert loop.DataConfig(image_size=32,
                           train_size_schedule=((0, 32),)).trains_at_image_size

    def refused(match, epochs=100, **changes):
        run = config_lib.RunConfig(data=loop.DataConfig(image_size=32, **changes),
                                   train=loop.TrainConfig(epochs=epochs))
        with pytest.raises(ValueError, match=match):
            config_lib.validate(run)

    refused("must start at epoch 0", train_size_schedule=((1, 16), (64, 24)))
    refused("epochs must rise", train_size_schedule=((0, 16), (64, 24), (64, 32)))
    refused("starts at epoch 64, after the run's last epoch 49",
            epochs=50, train_size_schedule=((0, 16), (64, 24)))
    refused("sides must be >= 8", train_size_schedule=((0, 4), (64, 24)))
    refused("needs at least one", train_size_schedule=())
    refused("not both", train_image_size=24, train_size_schedule=((0, 16),))
    refused(r"train_size_schedule must be .*got \(\(0, '16'\),\)",
            train_size_schedule=((0, "16"),))


def test_staged_pipeline_is_each_stage_alone(tmp_path):
    """Progressive resizing's pipeline: every stage's batches are exactly the ones
    make_train_dataset gives that stage alone, including a resume's skipped steps."""
    from tf_instcls.training import loop

    x = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    path = str(tmp_path / "x.npz")
    np.savez(path, x=x)
    src = data_lib.load_source(f"npz:{path}")
    data = loop.DataConfig(dataset=f"npz:{path}", image_size=16,
                           train_size_schedule=((0, 8), (2, 12)))
    stages = [(a, b, data.augment_config(side)) for a, b, side in data.train_stages(4)]
    args = dict(global_batch_size=8, seed=3)
    staged = list(data_lib.make_staged_train_dataset(src, stages, epoch=1, last_epoch=4,
                                                     start_step=2, **args))
    alone = [*data_lib.make_train_dataset(src, stages[0][2], epoch=1, start_step=2, **args),
             *data_lib.make_train_dataset(src, stages[1][2], epoch=2, last_epoch=4, **args)]
    assert len(staged) == len(alone) == 3 + 5 + 5
    assert [b["images"].shape[2] for b in staged] == [8] * 3 + [12] * 10
    for got, want in zip(staged, alone):
        np.testing.assert_array_equal(got["ids"], want["ids"])
        np.testing.assert_array_equal(got["images"], want["images"])
    with pytest.raises(ValueError, match="no stage covers epochs 4..4"):
        data_lib.make_staged_train_dataset(src, stages, epoch=4, last_epoch=5, **args)


@pytest.mark.slow
def test_a_run_trains_at_a_smaller_side_and_exports_at_image_size(tmp_path):
    """Views of 12 px, evaluation and export at 16 px: the encoder takes both sides, the
    export's features equal the live encoder's at 16 px, and a bad side is refused."""
    from tf_instcls import export, parallel, pretrain
    from tf_instcls.parallel.features import extract_features
    from tf_instcls.training import config as config_lib
    from tf_instcls.training import loop

    configs = dict(
        data=loop.DataConfig(dataset="synthetic:256:16:4", image_size=16,
                             train_image_size=12),
        model=loop.ModelConfig(backbone="resnet18_cifar", backbone_width=4,
                               head_hidden_dim=16, embedding_dim=16),
        optim=loop.OptimConfig(warmup_epochs=0),
        train=loop.TrainConfig(epochs=1, batch_size=64, verbose=0),
        method=loop.FullConfig(num_hard_negatives=8), monitor=loop.MonitorConfig(k=10))
    mesh = parallel.build_mesh(2)
    logs = pretrain.run_pretraining(str(tmp_path), **configs, mesh=mesh)
    assert logs["step"] == 3 and np.isfinite(logs["loss"]) and 0 <= logs["knn_top1"] <= 100
    state = loop.build_state(str(tmp_path), **configs, mesh=mesh)
    assert state.run_info["train_image_size"] == 12 and state.run_info["image_size"] == 16
    source = state.eval_source
    live = extract_features(state.encoder, source, 16, mesh, batch_size=8)
    restored = export.restore_encoder(str(tmp_path))
    assert restored.image_size == 16
    again = extract_features(restored.encoder, source, 16, mesh, batch_size=8)
    np.testing.assert_allclose(again["features"], live["features"], rtol=1e-5, atol=1e-5)
    bad = config_lib.RunConfig(data=loop.DataConfig(train_image_size=4))
    with pytest.raises(ValueError, match="train_image_size must be None or >= 8; got 4"):
        config_lib.validate(bad)
