"""tf_instcls: unsupervised representation learning by full instance classification.

Implements "Train a One-Million-Way Instance Classifier for Unsupervised Visual
Representation Learning" (Liu et al., AAAI 2021) on TensorFlow DTensor, with NPID
(Wu et al., 2018) as the baseline. The package layout follows the data flow:
``parallel/`` (mesh, sharded classifier) -> ``losses/`` (pure functions) ->
``training/`` (optimizer, steps).
"""

__version__ = "0.1.0"
