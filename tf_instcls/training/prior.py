"""The contrastive prior's rows (Liu et al. 2021, Sec. 3.2): the untouched network's
embedding of every training image. The callback that writes them into W is
``callbacks.ContrastivePrior``; the Fig. 4 analysis (``eval.similarity``) reads them too."""

import numpy as np

from tf_instcls.parallel.features import extract_features

INIT_MODES = ("gaussian", "prior_fixed_bn", "prior_running_bn")


def prior_embeddings(encoder, source, image_size, mesh, *, running_bn: bool,
                     batch_size: int = 256) -> np.ndarray:
    """[N, D] head embeddings of every image (unaugmented), BN running or fixed."""
    return extract_features(encoder, source, image_size, mesh, batch_size=batch_size,
                            progress=True, training=running_bn)["embedding"]
