"""Weighted kNN classification (NPID protocol): cosine similarity, top-k neighbours,
each voting for its class with weight exp(s / temperature).

Memory is bounded on both sides: queries go in blocks and the bank in chunks, with a
running top-k merged per chunk, so a 1.28M-image bank never needs a [queries, bank]
similarity matrix (at most ``max_elements`` similarities exist at once).
"""

from __future__ import annotations

import numpy as np

from tf_instcls import defaults
from tf_instcls.rows import unit_rows


def _normalise(x):
    return unit_rows(x, np.float32)


def nearest_neighbours(bank_features, query_features, k: int, *,
                       max_elements: int = 1 << 25, exclude_self: bool = False):
    """Top-``k`` cosine neighbours of each query in the bank, best first.

    Returns (indices [q, k] int64, similarities [q, k] float32). Equal similarities
    are ordered by bank index, also at the k-th place: the result is that of a stable
    sort of each query's whole row, whatever the chunking. ``exclude_self`` drops bank
    row i from query i's list (query set == bank, leave-one-out).
    """
    bank, query = _normalise(bank_features), _normalise(query_features)
    if bank.ndim != 2 or query.ndim != 2 or bank.shape[1] != query.shape[1]:
        raise ValueError(f"feature shapes do not match: bank {bank.shape}, query {query.shape}")
    m = len(bank)
    k = min(k, m - 1 if exclude_self else m)
    if k < 1:
        raise ValueError(f"need k >= 1 and a non-empty bank; got k={k}, bank size {m}")
    chunk = int(min(m, max(k, max_elements // 64)))
    block = int(max(1, min(len(query), max_elements // chunk)))
    out_idx = np.empty((len(query), k), np.int64)
    out_sim = np.empty((len(query), k), np.float32)
    for qs in range(0, len(query), block):
        q = query[qs : qs + block]
        best_sim = np.full((len(q), 0), -np.inf, np.float32)
        best_idx = np.zeros((len(q), 0), np.int64)
        for bs in range(0, m, chunk):
            sims = q @ bank[bs : bs + chunk].T
            ids = np.broadcast_to(np.arange(bs, bs + sims.shape[1]), sims.shape)
            if exclude_self:
                local = np.arange(qs, qs + len(q)) - bs
                inside = (local >= 0) & (local < sims.shape[1])
                sims[np.nonzero(inside)[0], local[inside]] = -np.inf
            sims = np.concatenate([best_sim, sims], axis=1)
            ids = np.concatenate([best_idx, ids], axis=1)
            best_sim, best_idx = _top(sims, ids, min(k, sims.shape[1]))
        order = np.lexsort((best_idx, -best_sim), axis=1)  # by similarity, ties by index
        out_sim[qs : qs + block] = np.take_along_axis(best_sim, order, axis=1)
        out_idx[qs : qs + block] = np.take_along_axis(best_idx, order, axis=1)
    return out_idx, out_sim


def _top(sims, ids, keep: int):
    """The ``keep`` largest similarities of each row and their bank ids; of rows tied at
    the last place, the lowest ids (so the result does not depend on the chunking, and
    equals a stable sort of the whole row)."""
    part = np.argpartition(-sims, keep - 1, axis=1)[:, :keep]
    best_sim = np.take_along_axis(sims, part, axis=1)
    best_idx = np.take_along_axis(ids, part, axis=1)
    last = best_sim.min(axis=1, keepdims=True)
    unsure = np.nonzero((sims == last).sum(axis=1) > (best_sim == last).sum(axis=1))[0]
    for row in unsure:  # more candidates tie at the last place than were kept
        above = np.flatnonzero(sims[row] > last[row])
        tied = np.flatnonzero(sims[row] == last[row])
        tied = tied[np.argsort(ids[row, tied], kind="stable")][: keep - len(above)]
        chosen = np.concatenate([above, tied])
        best_sim[row], best_idx[row] = sims[row, chosen], ids[row, chosen]
    return best_sim, best_idx


def knn_vote(neighbour_labels, similarities, *, k: int, temperature: float,
             num_classes: int) -> np.ndarray:
    """Class scores [q, C] from the first ``k`` (sorted) neighbours' weighted votes."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0; got k={k}, temperature={temperature}")
    labels = np.asarray(neighbour_labels)[:, :k]
    weights = np.exp(np.asarray(similarities, np.float64)[:, :k] / temperature)
    votes = np.zeros((len(labels), num_classes), np.float64)
    np.add.at(votes, (np.arange(len(labels))[:, None], labels), weights)
    return votes


def topk_accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(top-1, top-5) in % of class scores [q, C]; ties broken by the lower class."""
    ranked = np.argsort(-scores, axis=1, kind="stable")
    labels = np.asarray(labels)
    top1 = float((ranked[:, 0] == labels).mean() * 100)
    top5 = float((ranked[:, :5] == labels[:, None]).any(axis=1).mean() * 100)
    return top1, top5


def _check_labels(bank, bank_labels, query, query_labels):
    if len(bank_labels) != len(bank) or len(query_labels) != len(query):
        raise ValueError("one label per feature row is required")


def weighted_knn(
    bank_features: np.ndarray,
    bank_labels: np.ndarray,
    query_features: np.ndarray,
    query_labels: np.ndarray,
    *,
    k: int = defaults.KNN_K,
    temperature: float = defaults.KNN_TEMPERATURE,
    num_classes: int | None = None,
    max_elements: int = 1 << 25,
) -> dict:
    """Top-1 / top-5 accuracy (in %) of weighted kNN. Features need not be normalised;
    ``k`` is clipped to the bank size."""
    return knn_grid(bank_features, bank_labels, query_features, query_labels, ks=[k],
                    temperatures=[temperature], num_classes=num_classes,
                    max_elements=max_elements)[0]


def knn_grid(bank_features, bank_labels, query_features, query_labels, *, ks, temperatures,
             num_classes: int | None = None, max_elements: int = 1 << 25) -> list[dict]:
    """Weighted kNN for every (k, temperature): one neighbour search at max(ks)."""
    _check_labels(bank_features, bank_labels, query_features, query_labels)
    if min(ks) < 1 or min(temperatures) <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0; got k={ks}, "
                         f"temperature={temperatures}")
    bank_labels = np.asarray(bank_labels, np.int64)
    query_labels = np.asarray(query_labels, np.int64)
    classes = num_classes or int(max(bank_labels.max(), query_labels.max())) + 1
    idx, sims = nearest_neighbours(bank_features, query_features, max(ks),
                                   max_elements=max_elements)
    neighbour_labels = bank_labels[idx]
    results = []
    for k in ks:
        k_eff = min(k, idx.shape[1])
        for temperature in temperatures:
            votes = knn_vote(neighbour_labels, sims, k=k_eff, temperature=temperature,
                             num_classes=classes)
            top1, top5 = topk_accuracy(votes, query_labels)
            results.append({"top1": top1, "top5": top5, "k": k_eff,
                            "temperature": temperature, "num_queries": len(query_labels),
                            "bank_size": len(bank_labels)})
    return results
