"""Linear evaluation: a softmax classifier on frozen features, SGD + momentum with a
cosine schedule (the paper: batch 2048, lr 40, on L2-normalised pooled features)."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tf_instcls.eval.knn import topk_accuracy
from tf_instcls.rows import unit_rows
from tf_instcls.training.optimizer import MomentumSGD
from tf_instcls.training.schedules import cosine_decay

FEATURE_NORMS = ("l2", "standardize", "none")


def normalise_features(x, mode: str, stats=None):
    """Returns (normalised x, stats); ``stats`` (mean, std) come from the training split."""
    x = np.asarray(x, np.float32)
    if mode == "l2":
        return unit_rows(x), None
    if mode == "standardize":
        if stats is None:
            stats = (x.mean(0), x.std(0) + 1e-6)
        return (x - stats[0]) / stats[1], stats
    if mode == "none":
        return x, None
    raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}; got {mode!r}")


def train_linear(train_x, train_y, eval_x, eval_y, *, num_classes: int, epochs: int = 100,
                 batch_size: int = 2048, learning_rate: float = 40.0, momentum: float = 0.9,
                 weight_decay: float = 0.0, feature_norm: str = "l2", seed: int = 0,
                 epoch_features=None, progress: bool = True) -> dict:
    """Trains W [F, C], b [C] from zeros; returns accuracies, the loss curve and weights.

    ``epoch_features(epoch) -> [n, F]`` supplies each epoch's training features (the
    augmented-view protocol); otherwise ``train_x`` is used every epoch.
    The learning rate is scaled linearly from batch 2048 when the training split is
    smaller than one batch (the batch shrinks to the split).
    """
    if epochs < 1 or batch_size < 1 or learning_rate <= 0:
        raise ValueError("need epochs >= 1, batch_size >= 1 and learning_rate > 0")
    train_y = np.asarray(train_y, np.int64)
    n = len(train_y)
    _, stats = normalise_features(train_x, feature_norm)
    feats = normalise_features(train_x, feature_norm, stats)[0]
    batch = min(batch_size, n)
    lr = learning_rate * batch / batch_size
    steps_per_epoch = math.ceil(n / batch)
    total = epochs * steps_per_epoch
    dim = feats.shape[1]
    w = tf.Variable(tf.zeros([dim, num_classes]), name="linear_kernel")
    b = tf.Variable(tf.zeros([num_classes]), name="linear_bias")
    # the pretraining optimizer (PyTorch semantics: decay added to the gradient), with
    # no decay on the bias
    optimizer = MomentumSGD(momentum=momentum, weight_decay=weight_decay,
                            exclude_from_decay=("linear_bias",))
    optimizer.build([w, b])

    @tf.function
    def step(x, y, step_lr):
        with tf.GradientTape() as tape:
            logits = tf.matmul(x, w) + b
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]), step_lr)
        return loss

    rng = np.random.default_rng(seed)
    bar = tf.keras.utils.Progbar(epochs, verbose=1 if progress else 0, unit_name="epoch")
    history = []
    global_step = 0
    for epoch in range(epochs):
        if epoch_features is not None:
            feats = normalise_features(epoch_features(epoch), feature_norm, stats)[0]
        order = rng.permutation(n)
        losses = []
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            step_lr = cosine_decay(global_step, total, lr)
            losses.append(float(step(tf.constant(feats[idx]), tf.constant(train_y[idx]),
                                     tf.constant(step_lr, tf.float32))))
            global_step += 1
        history.append(float(np.mean(losses)))
        if not np.isfinite(history[-1]):
            raise FloatingPointError(f"linear classifier loss is {history[-1]} at epoch "
                                     f"{epoch}: lower --learning_rate")
        bar.add(1, [("loss", history[-1])])

    def scores(x):
        return normalise_features(x, feature_norm, stats)[0] @ w.numpy() + b.numpy()

    train_top1, _ = topk_accuracy(scores(train_x), train_y)
    top1, top5 = topk_accuracy(scores(eval_x), np.asarray(eval_y))
    return {"top1": top1, "top5": top5, "train_top1": train_top1, "loss_curve": history,
            "epochs": epochs, "batch_size": batch, "learning_rate": lr,
            "feature_norm": feature_norm, "weights": w.numpy(), "bias": b.numpy()}
