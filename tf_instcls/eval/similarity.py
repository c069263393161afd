"""Fig. 4 analysis: how well does the *initial* classifier recognise augmented views?

For instance i, x_i is the random network's embedding of one augmented view and w_i
its initial classifier row. intra = mean_i cos(x_i, w_i); inter = mean_{i != j}
cos(x_i, w_j); gap = intra - inter. With a Gaussian W the rows carry no information
(gap ~ 0). With the contrastive prior, w_i is the network's embedding of the
unaugmented image, so the gap measures the "contrastive prior" the paper describes
(running BN ~9.3%, fixed BN ~1.5% on ImageNet).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tf_instcls import defaults, models, parallel
from tf_instcls.data.augment import AugmentConfig, augment_view, view_seed
from tf_instcls.parallel import layouts
from tf_instcls.parallel.features import mesh_batch_size, run_encoder
from tf_instcls.rows import unit_rows
from tf_instcls.training.prior import INIT_MODES, prior_embeddings


def augmented_embeddings(encoder, source, config: AugmentConfig, mesh, *, seed: int,
                         running_bn: bool, batch_size: int = 256) -> np.ndarray:
    """[N, D] embeddings of one augmented view per instance (BN running or fixed)."""
    batch_size = mesh_batch_size(batch_size, mesh)
    n = source.num_images
    total = int(np.ceil(n / batch_size)) * batch_size  # padded: every batch splits evenly
    load = source.load_fn(None)

    def one(index):
        index = tf.minimum(tf.cast(index, tf.int32), n - 1)
        return augment_view(load(index), view_seed(seed, 0, index, 0), config)

    batches = tf.data.Dataset.range(total).map(one, num_parallel_calls=tf.data.AUTOTUNE)
    out = run_encoder(encoder, batches.batch(batch_size), mesh, training=running_bn)
    return out["embedding"][:n]


def intra_inter(x: np.ndarray, w: np.ndarray) -> dict:
    """intra / inter / gap (in %) of cosine similarities between rows of x and of w."""
    x, w = unit_rows(x), unit_rows(w)
    n = len(x)
    diag = np.einsum("nd,nd->n", x, w)
    intra = diag.mean()
    inter = (x.sum(0) @ w.sum(0) - diag.sum()) / (n * (n - 1))
    return {"intra": 100 * float(intra), "inter": 100 * float(inter),
            "gap": 100 * float(intra - inter)}


def similarity_stats(source, mesh, *, backbone: str, image_size: int, seed: int = 0,
                     backbone_width: int | None = None, embedding_dim: int = defaults.EMBEDDING_DIM,
                     head_hidden_dim: int = defaults.HEAD_HIDDEN_DIM, modes=INIT_MODES) -> dict:
    """``{mode: {"intra", "inter", "gap"}}`` for fresh networks of the same seed."""
    config = AugmentConfig(image_size=image_size)
    results = {}
    for mode in modes:
        keras.utils.set_random_seed(seed)  # the same random network for every mode
        encoder = models.build_encoder(backbone, image_size, embedding_dim=embedding_dim,
                                       head_hidden_dim=head_hidden_dim,
                                       backbone_width=backbone_width)
        layouts.replicate_model_variables(encoder, mesh)
        running = mode == "prior_running_bn"
        if mode == "gaussian":
            clf = parallel.InstanceClassifier(source.num_images, embedding_dim, mesh=mesh,
                                              seed=seed)
            w = parallel.to_numpy(clf.class_weights)[: source.num_images]
        else:
            w = prior_embeddings(encoder, source, image_size, mesh, running_bn=running)
        x = augmented_embeddings(encoder, source, config, mesh, seed=seed, running_bn=running)
        results[mode] = intra_inter(x, w)
    return results
