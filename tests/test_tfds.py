"""The TFDS path without internet: ``tfds.testing.mock_data`` makes ``tfds.data_source``
return deterministic fake examples shaped by the real metadata (CIFAR-10's and
ImageNet's ship with TFDS). Training, the kNN monitor, the evaluation tools, transfer by
TFDS name and ImageNet's 1% / 10% subsets all run on it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_instcls import data as data_lib
from tf_instcls import parallel, pretrain
from tf_instcls.training import loop

from helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(__file__))
MOCK_TOOL = os.path.join(os.path.dirname(__file__), "tfds_mock_tool.py")


class _Spy:
    """A TFDS data source that records every example read: (image decoded?, index)."""

    def __init__(self, source, decodes_images, reads):
        self._source, self._decodes, self._reads = source, decodes_images, reads

    def __getitem__(self, index):
        self._reads.append((self._decodes, int(index)))
        return self._source[index]

    def __len__(self):
        return len(self._source)

    def __getattr__(self, name):
        return getattr(self._source, name)


def test_tfds_source_reads_labels_and_images_without_decoding_in_python(monkeypatch):
    reads = []
    real = tfds.data_source

    def spy(name, split=None, decoders=None, **kwargs):
        skipped = isinstance((decoders or {}).get("image"), tfds.decode.SkipDecoding)
        return _Spy(real(name, split=split, decoders=decoders, **kwargs), not skipped, reads)

    monkeypatch.setattr(tfds, "data_source", spy)
    with tfds.testing.mock_data(num_examples=40):
        source = data_lib.load_source("tfds:cifar10:test")
        assert source.num_images == 40 and len(source.class_names) == 10
        # 40 labels read, every one from the source whose images are not decoded
        assert sorted(reads) == [(False, i) for i in range(40)]
        direct = real("cifar10", split="test")
        np.testing.assert_array_equal(source.labels, [direct[i]["label"] for i in range(40)])
        image = source.load_fn(None)(np.int32(7)).numpy()
    # the pipeline reads the encoded bytes (no decode in Python, where the GIL is held)
    # and TensorFlow decodes them: the same pixels as TFDS's own decode
    assert reads[-1] == (False, 7)
    np.testing.assert_array_equal(image, direct[7]["image"])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


@pytest.fixture(scope="module")
def tfds_run(tmp_path_factory):
    """A 1-epoch run on tfds:cifar10 with the kNN monitor on tfds:cifar10:test."""
    model_dir = str(tmp_path_factory.mktemp("tfds_run"))
    configs = dict(
        data=loop.DataConfig(dataset="tfds:cifar10", eval_dataset="tfds:cifar10:test",
                             image_size=16),
        model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=16),
        optim=loop.OptimConfig(warmup_epochs=0),
        train=loop.TrainConfig(epochs=1, batch_size=64, verbose=0),
        method=loop.FullConfig(num_hard_negatives=8),
        monitor=loop.MonitorConfig(k=10),
    )
    with tfds.testing.mock_data(num_examples=192):
        logs = pretrain.run_pretraining(model_dir, **configs, mesh=parallel.build_mesh(2))
    return model_dir, logs


@pytest.mark.slow
def test_train_on_tfds_with_the_knn_monitor_on_its_test_split(tfds_run):
    model_dir, logs = tfds_run
    assert logs["step"] == 3 and np.isfinite(logs["loss"])
    assert 0 <= logs["knn_top1"] <= 100 and "knn_top1_at_init" in logs
    with open(os.path.join(model_dir, "run_info.json")) as f:
        info = json.load(f)
    assert info["dataset"] == "tfds:cifar10" and info["num_instances"] == 192
    assert info["eval_dataset"] == "tfds:cifar10:test"


def _tool(name, *flags, num_examples=192):
    cmd = [sys.executable, MOCK_TOOL, str(num_examples), os.path.join(ROOT, "tools", name),
           *flags]
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_eval_tools_and_transfer_on_tfds_splits(tfds_run, tmp_path):
    model_dir, _ = tfds_run
    common = [f"--model_dir={model_dir}", "--virtual_devices=2", "--batch_size=64"]
    _tool("eval_knn.py", *common, "--dataset=tfds:cifar10", "--eval_dataset=tfds:cifar10:test",
          "--k=10", f"--out_dir={tmp_path / 'knn'}")
    knn = json.load(open(tmp_path / "knn" / "knn.json"))
    assert {r["representation"] for r in knn["results"]} == {"features", "embedding"}
    assert all(0 <= r["top1"] <= 100 for r in knn["results"])
    _tool("eval_linear.py", *common, "--dataset=tfds:cifar10",
          "--eval_dataset=tfds:cifar10:test", "--epochs=2", f"--out_dir={tmp_path / 'lin'}")
    linear = json.load(open(tmp_path / "lin" / "linear.json"))
    assert 0 <= linear["results"][0]["top1"] <= 100
    # transfer: fine-tune on another TFDS dataset, named only by its TFDS name
    _tool("finetune.py", *common, "--dataset=tfds:cifar100", "--eval_dataset=tfds:cifar100:test",
          "--label_fraction=1", "--epochs=1", "--finetune_batch_size=64",
          f"--out_dir={tmp_path / 'ft'}")
    ft = json.load(open(tmp_path / "ft" / "finetune_1.json"))
    assert ft["data"]["dataset"] == "tfds:cifar100" and ft["labelled"] == "all labels"
    assert 0 <= ft["results"][0]["top1"] <= 100


@pytest.mark.slow
def test_imagenet_label_fractions_use_tfds_imagenet2012_subset(tfds_run, tmp_path):
    model_dir, _ = tfds_run
    done = _tool("finetune.py", f"--model_dir={model_dir}", "--virtual_devices=2",
                 "--batch_size=64", "--dataset=tfds:imagenet2012",
                 "--eval_dataset=tfds:imagenet2012:validation", "--label_fraction=0.01",
                 "--epochs=1", "--finetune_batch_size=64", f"--out_dir={tmp_path / 'in1pct'}",
                 num_examples=64)
    ft = json.load(open(tmp_path / "in1pct" / "finetune_0.01.json"))
    assert ft["labelled"] == "tfds:imagenet2012_subset/1pct:train"  # the official 1% split
    assert "imagenet2012_subset/1pct" in done.stdout and 0 <= ft["results"][0]["top1"] <= 100
