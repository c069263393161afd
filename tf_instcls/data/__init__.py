"""Data: sources with stable instance ids, stateless two-view augmentation, pipelines."""

from tf_instcls.data.augment import (
    AugmentConfig,
    augment_view,
    default_config,
    eval_view,
    supervised_config,
)
from tf_instcls.data.pipeline import (
    epoch_batch_ids,
    epoch_permutation,
    eval_preprocess,
    make_eval_dataset,
    make_staged_train_dataset,
    make_train_dataset,
    steps_per_epoch,
)
from tf_instcls.data.sources import ImageSource, LabelledSplits, load_source, split_holdout

__all__ = [
    "AugmentConfig",
    "ImageSource",
    "LabelledSplits",
    "augment_view",
    "default_config",
    "epoch_batch_ids",
    "epoch_permutation",
    "eval_preprocess",
    "eval_view",
    "load_source",
    "make_eval_dataset",
    "make_staged_train_dataset",
    "make_train_dataset",
    "split_holdout",
    "steps_per_epoch",
    "supervised_config",
]
