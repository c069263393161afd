"""Keras callbacks of the training loop (one per file)."""

from tf_instcls.callbacks.checkpoint import CheckpointSaver
from tf_instcls.callbacks.contrastive_prior import INIT_MODES, ContrastivePrior
from tf_instcls.callbacks.defaults import default_callbacks
from tf_instcls.callbacks.hard_negative_miner import HardNegativeMiner
from tf_instcls.callbacks.knn_monitor import KNNMonitor
from tf_instcls.callbacks.metrics_writer import MetricsWriter
from tf_instcls.callbacks.progress import ProgressLogger
from tf_instcls.callbacks.summaries import ScalarSummaries

__all__ = [
    "INIT_MODES",
    "CheckpointSaver",
    "ContrastivePrior",
    "HardNegativeMiner", "KNNMonitor", "MetricsWriter", "ProgressLogger", "ScalarSummaries",
    "default_callbacks"]
