"""tf_instcls: unsupervised representation learning by full instance classification.

Implements "Train a One-Million-Way Instance Classifier for Unsupervised Visual
Representation Learning" (Liu et al., AAAI 2021) on TensorFlow DTensor, with NPID
(Wu et al., 2018) as the baseline. Layers, each importing only those before it:
``data`` -> ``models`` -> ``parallel`` (mesh, sharded classifier) -> ``losses`` ->
``mining`` -> ``methods`` -> ``training`` (optimizer, step, loop) -> ``callbacks`` ->
``eval`` (evaluators, runner) -> ``export`` -> ``pretrain`` (``run_pretraining``).
"""

__version__ = "0.1.0"
