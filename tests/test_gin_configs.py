"""Every gin config parses and finalizes (with tiny overrides), and bad bindings fail."""

import dataclasses
import glob
import os

import pytest

import gin
from tf_instcls.cli import gin_config
from tf_instcls.training import loop

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "gin")
CONFIGS = sorted(glob.glob(os.path.join(GIN_DIR, "*.gin")))


def _parse(files, bindings=()):
    gin.clear_config(clear_constants=True)
    if any(os.path.basename(f) == "cifar10_subset_npz.gin" for f in files):
        bindings = ["DataConfig.dataset = 'npz:images.npz'", *bindings]  # required there
    return gin_config.configs_from_gin(files, bindings, search_path=GIN_DIR)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_parses_with_tiny_overrides(path):
    config = _parse([path], ["TrainConfig.epochs = 1", "TrainConfig.batch_size = 8"])
    data, model, optim, train = config.data, config.model, config.optim, config.train
    assert train.epochs == 1 and train.batch_size == 8
    assert optim.momentum == 0.9
    # the paper's D = 128, except the scale runs' (the classifier dominates)
    assert model.embedding_dim == (32 if os.path.basename(path) == "scale_synthetic.gin"
                                   else 128)
    assert config.method.temperature == 0.15  # the paper's, the small-data recipe's too
    if os.path.basename(path) == "cifar10_subset_npz.gin":  # the small-data recipe
        assert optim.weight_decay == 5e-4
    else:  # the paper's value
        assert optim.weight_decay == 1e-4
    assert data.dataset


def test_imagenet_config_is_the_papers_recipe():
    config = _parse([os.path.join(GIN_DIR, "imagenet_resnet50.gin")])
    data, model, optim, train = config.data, config.model, config.optim, config.train
    assert model.backbone == "resnet50" and train.batch_size == 4096
    assert optim.base_learning_rate == 0.48 and optim.warmup_epochs == 10
    assert data.crop_scale == (0.08, 1.0) and data.blur_prob == 0.5 and data.image_size == 224


def test_unknown_binding_fails():
    with pytest.raises(ValueError):
        _parse([os.path.join(GIN_DIR, "digits.gin")], ["TrainConfig.epochz = 3"])


def test_a_binding_renamed_by_the_split_fails_with_its_new_name(tmp_path):
    """The configs were split by owner: a user's old binding (flag or gin file) fails and
    the error names the new one."""
    digits = os.path.join(GIN_DIR, "digits.gin")
    with pytest.raises(ValueError, match=r"renamed.*TrainConfig.knn_every_epochs -> "
                                         r"MonitorConfig.every_epochs"):
        _parse([digits], ["TrainConfig.knn_every_epochs = 0"])
    old = tmp_path / "old.gin"
    old.write_text("ModelConfig.method = 'npid'\nTrainConfig.smoothing = 0.0\n")
    with pytest.raises(ValueError, match=r"ModelConfig.method -> MethodConfig.name \(in "
                                         r".*old.gin\).*TrainConfig.smoothing -> "
                                         r"FullConfig.smoothing"):
        _parse([digits, str(old)])
    # the methods' own configs: an old MethodConfig field names its method's config
    with pytest.raises(ValueError, match=r"MethodConfig.npid_noise -> NPIDConfig.noise"):
        _parse([digits], ["MethodConfig.npid_noise = 400"])
    config = _parse([digits], ["MonitorConfig.every_epochs = 0", "MethodConfig.name = 'npid'",
                               "NPIDConfig.noise = 400"])
    assert config.monitor.every_epochs == 0 and isinstance(config.method, loop.NPIDConfig)
    assert config.method.noise == 400 and config.method.temperature == 0.07
    assert config.model.backbone == "convnet_small"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method.noise = 1  # each part is frozen
    with pytest.raises(ValueError, match=r"MethodConfig.name = 'byol' is not a registered "
                                         r"method; registered: full, sampled, npid, simclr"):
        _parse([digits], ["MethodConfig.name = 'byol'"])


ABLATIONS = sorted(glob.glob(os.path.join(GIN_DIR, "ablations", "*.gin")))


@pytest.mark.parametrize("path", ABLATIONS, ids=os.path.basename)
def test_ablation_configs_stack_on_a_dataset_config_and_validate(path):
    config = _parse([os.path.join(GIN_DIR, "cifar10_subset_npz.gin"), path])
    loop.validate(config)
    model, method, optim = config.model, config.method, config.optim
    name = os.path.basename(path)
    if name == "npid.gin":
        assert isinstance(method, loop.NPIDConfig) and method.noise == 4096
        assert not model.use_head
        assert method.temperature == 0.07 and config.classifier.init_mode == "gaussian"
    if name == "sampled.gin":
        assert isinstance(method, loop.SampledConfig) and method.num_sampled == 1024
    if name == "no_head.gin":
        assert not model.use_head
    if name == "simclr.gin":
        assert isinstance(method, loop.SimCLRConfig) and method.temperature == 0.5
        assert method.num_hard_negatives_mined == 0 and optim.base_learning_rate == 0.06


def test_the_small_data_recipe_names_no_path_and_asks_for_the_dataset():
    """Shipped configs name no path a user does not have: the recipe's dataset is
    required, and leaving it out says which binding (and flag) to give."""
    text = open(os.path.join(GIN_DIR, "cifar10_subset_npz.gin")).read()
    assert "shared" not in text and "DataConfig.dataset = %gin.REQUIRED" in text
    gin.clear_config(clear_constants=True)
    with pytest.raises(ValueError, match=r"DataConfig.dataset is required by the gin config "
                                         r"and was not set.*--dataset=digits \| npz:PATH"):
        gin_config.configs_from_gin([os.path.join(GIN_DIR, "cifar10_subset_npz.gin")],
                                    search_path=GIN_DIR)


def test_recipe_gives_w_its_own_step_and_the_paper_config_does_not():
    """The CIFAR-subset recipe moves W (unit-norm rows, own lr and decay); the paper's
    ImageNet config keeps the single optimizer and free W."""
    config = _parse([os.path.join(GIN_DIR, "cifar10_subset_npz.gin")])
    assert config.classifier.unit_norm and config.optim.classifier_lr_scale == 128.0
    assert config.optim.classifier_weight_decay == 0.0
    # training views at 24 px, evaluation at 32 (the augmentation follows)
    assert config.data.train_image_size == 24 and config.data.image_size == 32
    assert config.data.augment_config().image_size == 24
    # a wall-clock budget of 28 minutes plans the epochs (at most 400)
    assert config.train.time_budget_minutes == 28.0 and config.train.epochs == 400
    config = _parse([os.path.join(GIN_DIR, "imagenet_resnet50.gin")])
    assert config.train.time_budget_minutes == 0.0  # the paper's fixed epochs
    assert config.data.train_image_size is None
    assert config.data.augment_config().image_size == 224
    assert not config.classifier.unit_norm and config.optim.classifier_lr_scale == 1.0
    assert config.optim.classifier_weight_decay is None and config.method.temperature == 0.15


def test_a_method_without_smoothing_has_no_smoothing_to_set():
    """Smoothing belongs to the full method's config: the sampled method neither mines
    nor accepts a smoothing binding."""
    config = _parse([os.path.join(GIN_DIR, "cifar10_subset_npz.gin")],
                    ["MethodConfig.name = 'sampled'"])
    loop.validate(config)
    assert isinstance(config.method, loop.SampledConfig)
    assert config.method.num_hard_negatives_mined == 0
    with pytest.raises(ValueError, match="SampledConfig.*smoothing"):
        _parse([os.path.join(GIN_DIR, "cifar10_subset_npz.gin")],
               ["MethodConfig.name = 'sampled'", "SampledConfig.smoothing = 0.2"])


def test_every_augmentation_value_is_settable_from_gin_and_defaults_follow_the_size():
    import numpy as np

    from tf_instcls import data as data_lib
    from tf_instcls.data import augment as augment_lib

    data = _parse([os.path.join(GIN_DIR, "digits.gin")],
                      ["DataConfig.jitter_prob = 0.0", "DataConfig.grayscale_prob = 1.0",
                       "DataConfig.jitter_strength = (0.1, 0.2, 0.3, 0.05)"]).data
    augment = data.augment_config()
    assert augment.grayscale_prob == 1.0 and augment.jitter_prob == 0.0
    assert augment.jitter_strength == (0.1, 0.2, 0.3, 0.05)
    assert augment.crop_scale == (0.4, 1.0)  # digits.gin's own value is kept
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    view = augment_lib.augment_view(image, augment_lib.view_seed(0, 0, 1, 0), augment).numpy()
    rgb = view * np.array(augment_lib.STD) + np.array(augment_lib.MEAN)
    np.testing.assert_allclose(rgb[..., 0], rgb[..., 1], atol=1e-5)  # always grayscale
    # unset values: the paper's defaults for the image size (data.default_config)
    assert loop.DataConfig(image_size=32).augment_config() == data_lib.default_config(32)
    big = loop.DataConfig(image_size=128).augment_config()
    assert big.crop_scale == (0.08, 1.0) and big.blur_prob == 0.5


def test_bad_augmentation_values_fail_in_validation_with_the_field_named():
    bad = loop.DataConfig(jitter_strength=(0.4, 0.4, 0.4, 0.9))  # hue beyond 0.5
    with pytest.raises(ValueError, match=r"DataConfig augmentation: jitter_strength must be"):
        loop.validate_configs(bad)
    bad = loop.DataConfig(jitter_strength=(0.4, 0.4, 0.4))  # three values: the wrong type
    with pytest.raises(ValueError, match=r"wrong type.*DataConfig.jitter_strength must be "
                                         r"tuple\[float, float, float, float\] \| None"):
        loop.validate_configs(bad)
    bad = loop.DataConfig(grayscale_prob=1.5)
    with pytest.raises(ValueError, match=r"grayscale_prob must be in \[0, 1\]"):
        loop.validate_configs(bad)


def test_an_include_found_on_the_search_path_logs_no_error(caplog):
    import logging

    caplog.set_level(logging.INFO)
    _parse([os.path.join(GIN_DIR, "cifar10_subset_npz.gin")])  # include "base.gin"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert not logging.getLogger().filters  # the parse-time filter is gone afterwards
