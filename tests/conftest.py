"""Test setup: 8 virtual CPU devices, configured once before TensorFlow initialises.

Meshes of 1, 2, 4 and 8 devices are built from subsets of them (see DESIGN.md).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))
# The checkout's benchmarks/ (scripts, not shipped), importable by module name as when
# they run (their shared `harness`, `processes`, ...).
sys.path.insert(1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

from tf_instcls.parallel import configure_virtual_devices  # noqa: E402

NUM_VIRTUAL_DEVICES = 8
configure_virtual_devices(NUM_VIRTUAL_DEVICES)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A 1-epoch pretraining run on digits (2 devices, 16 px), checkpoints at steps 2, 4
    and 5, shared by the export and evaluation tests. Returns (model_dir, configs)."""
    from tf_instcls import parallel, pretrain
    from tf_instcls.training import loop

    model_dir = str(tmp_path_factory.mktemp("tiny_run"))
    configs = dict(
        data=loop.DataConfig(image_size=16),
        model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=16),
        optim=loop.OptimConfig(warmup_epochs=0),
        train=loop.TrainConfig(epochs=1, batch_size=256, verbose=0, checkpoint_every_steps=2),
        method=loop.FullConfig(num_hard_negatives=8),
        monitor=loop.MonitorConfig(k=10),
    )
    pretrain.run_pretraining(model_dir, **configs, mesh=parallel.build_mesh(2))
    return model_dir, configs
