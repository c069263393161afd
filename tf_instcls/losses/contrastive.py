"""SimCLR's NT-Xent loss (Chen et al. 2020), the paper's main comparison: no W.

Each of the 2B views of the global batch is classified against the other 2B - 1 views;
its positive is the other view of the same image. On a mesh the batch-sharded
embeddings are first relayed out to replicated (an all-gather of [2B, D], small), so
every device sees all 2B views, as SimCLR's cross-replica negatives.
"""

from __future__ import annotations

import tensorflow as tf

from tf_instcls import defaults
from tf_instcls.parallel import layouts


def nt_xent_loss(embeddings, *, temperature: float = defaults.SIMCLR_TEMPERATURE, mesh=None):
    """Per-view loss [2B] and top-1 hit [2B] (is the positive the most similar view?).

    embeddings: [2B, D], the two views of instance i at rows 2i and 2i + 1 (the train
    step's order). ``mesh``: the DTensor mesh the embeddings are sharded on, or None.
    """
    if mesh is not None:
        embeddings = layouts.relayout(embeddings, layouts.replicated_layout(mesh, 2))
    views = embeddings.shape[0]
    if views is not None and views % 2:
        raise ValueError(f"nt_xent_loss needs pairs of views; got {views} rows")
    z = tf.math.l2_normalize(embeddings, axis=-1)  # [2B, D]
    logits = tf.matmul(z, z, transpose_b=True) / temperature  # [2B, 2B]
    n = tf.shape(logits)[0]
    index = tf.range(n)
    positive = tf.bitwise.bitwise_xor(index, 1)  # 2i <-> 2i + 1
    self_mask = tf.one_hot(index, n, on_value=-1e9, off_value=0.0)  # no self-pairs
    logits = logits + self_mask
    log_norm = tf.reduce_logsumexp(logits, axis=-1)  # [2B]
    positive_logit = tf.gather(logits, positive, axis=1, batch_dims=1)  # [2B]
    loss = log_norm - positive_logit
    hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), positive)
    return loss, hit
