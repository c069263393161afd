"""tf_instcls: unsupervised representation learning by full instance classification.

Implements "Train a One-Million-Way Instance Classifier for Unsupervised Visual
Representation Learning" (Liu et al., AAAI 2021) on TensorFlow DTensor, with NPID
(Wu et al., 2018) as the baseline. Layers, each importing only those before it:
``data`` -> ``models`` -> ``parallel`` (mesh, sharded classifier) -> ``losses`` ->
``mining`` -> ``methods`` -> ``training`` (optimizer, step, loop) -> ``callbacks`` ->
``eval`` (evaluators, runner) -> ``export`` -> ``pretrain`` (``run_pretraining``).
"""

import os

# TensorFlow's oneDNN CPU kernels (convolutions and their gradients, the fused
# BatchNorm, matmuls), which TensorFlow turns on by itself only on some Intel CPUs: on a
# 2-core AMD EPYC the recipe's training step is 2.2 x faster with them and the fused
# BatchNorm (benchmarks/bench_step_parts.py; 1.9 x with the input pipeline,
# benchmarks/bench_vs_torch.py). TensorFlow reads this once, when it is first imported:
# import tf_instcls before TensorFlow (the binaries do), or set it yourself;
# TF_ENABLE_ONEDNN_OPTS=0 keeps TensorFlow's own kernels.
# (Whether the user chose: child processes of another checkout decide for themselves.)
ONEDNN_FROM_ENVIRONMENT = "TF_ENABLE_ONEDNN_OPTS" in os.environ
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
