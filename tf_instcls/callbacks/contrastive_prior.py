"""Contrastive-prior initialisation of W (Liu et al. 2021, Sec. 3.2 / Fig. 4).

Before the first epoch, the untouched random network embeds every training image once
(the unaugmented view) and embedding i becomes row i of W, so that the classifier
starts from the network's own similarity structure instead of random directions.
"""

import keras
from absl import logging

from tf_instcls.training import stages
from tf_instcls.training.prior import INIT_MODES, prior_embeddings


class ContrastivePrior(keras.callbacks.Callback):
    """Initialises W in ``on_train_begin``; skipped when resuming (W is in the checkpoint).

    Modes:
      gaussian: keep the random normal W (the paper's baseline).
      prior_fixed_bn: BN in inference mode (its initial statistics) for the pass.
      prior_running_bn (the paper's method): BN uses batch statistics and updates its
        running statistics during the pass; every other weight stays fixed. The updated
        BN statistics are kept, as in the paper.
    """

    def __init__(self, *, encoder, classifier, source, image_size: int, mesh, step,
                 mode: str = "prior_running_bn", batch_size: int = 256,
                 model_dir: str | None = None):
        """``step()``: the run's global step (the prior runs only at step 0);
        ``model_dir``: where stages.jsonl records the pass (None: not recorded)."""
        super().__init__()
        if mode not in INIT_MODES:
            raise ValueError(f"init mode must be one of {INIT_MODES}; got {mode!r}")
        self.encoder, self.classifier, self.source = encoder, classifier, source
        self.image_size, self.mesh, self.step = image_size, mesh, step
        self.mode, self.batch_size, self.model_dir = mode, batch_size, model_dir

    def on_train_begin(self, logs=None):
        if self.mode == "gaussian" or self.step() > 0:
            return
        logging.info("contrastive prior (%s): embedding %d images", self.mode,
                     self.source.num_images)
        with stages.timed(self.model_dir, "prior", mode=self.mode,
                          images=self.source.num_images):
            rows = prior_embeddings(self.encoder, self.source, self.image_size, self.mesh,
                                    running_bn=self.mode == "prior_running_bn",
                                    batch_size=self.batch_size)
            self.classifier.assign_rows(rows)
