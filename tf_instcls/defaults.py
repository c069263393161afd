"""Every default that more than one place uses, written once, with
where it comes from. The lowest layer: anything may import it, it imports nothing."""

# The paper (Liu et al. 2021): cosine-softmax temperature, embedding width, MLP head.
TEMPERATURE = 0.15
EMBEDDING_DIM = 128
HEAD_HIDDEN_DIM = 2048

# NPID (Wu et al. 2018): its softmax / NCE temperature, and its kNN protocol (k
# neighbours voting with weight exp(similarity / temperature)), used by every kNN here.
NPID_TEMPERATURE = 0.07
KNN_K = 200
KNN_TEMPERATURE = 0.07

# SimCLR's NT-Xent temperature (lightly's small-data default; gin/ablations/simclr.gin).
SIMCLR_TEMPERATURE = 0.5

# The labelled holdout used for the kNN monitor when no eval split is given.
HOLDOUT_FRACTION = 0.15
