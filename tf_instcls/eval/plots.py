"""Figures users look at: retrieval grids (query + nearest neighbours) and curves."""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def retrieval_grid(queries, neighbours, path: str, *, scores=None, query_labels=None,
                   neighbour_labels=None, class_names=None, title: str = "") -> None:
    """One row per query: the query image, then its neighbours left to right.

    queries: uint8 [q, h, w, 3]; neighbours: uint8 [q, k, h, w, 3]; scores: [q, k]
    cosine similarities; labels (optional) are shown, and a neighbour whose label
    differs from its query's gets a red title.
    """
    plt = _pyplot()
    queries, neighbours = np.asarray(queries), np.asarray(neighbours)
    q, k = neighbours.shape[:2]
    fig, axes = plt.subplots(q, k + 1, figsize=(1.3 * (k + 1), 1.45 * q + 0.4), squeeze=False)

    def name(label):
        if label is None:
            return ""
        return str(class_names[label]) if class_names is not None else str(label)

    for row in range(q):
        qlabel = None if query_labels is None else int(query_labels[row])
        axes[row, 0].imshow(queries[row])
        axes[row, 0].set_title(f"query {name(qlabel)}", fontsize=7, fontweight="bold")
        for col in range(k):
            ax = axes[row, col + 1]
            ax.imshow(neighbours[row, col])
            label = None if neighbour_labels is None else int(neighbour_labels[row, col])
            text = name(label)
            if scores is not None:
                text = f"{text} {scores[row, col]:.3f}".strip()
            wrong = qlabel is not None and label is not None and label != qlabel
            ax.set_title(text, fontsize=7, color="red" if wrong else "black")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def line_plots(series: dict, path: str, *, x_label: str = "epoch", title: str = "") -> None:
    """One panel per entry of ``series``: name -> (xs, ys) or name -> {label: (xs, ys)}."""
    plt = _pyplot()
    names = list(series)
    cols = min(len(names), 2)
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), names):
        curves = series[key] if isinstance(series[key], dict) else {key: series[key]}
        for label, (xs, ys) in curves.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scatter(points: dict, path: str, *, x_label: str, y_label: str, title: str = "",
            annotate=None) -> None:
    """name -> (xs, ys) scatter, one colour each; ``annotate`` labels each point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for label, (xs, ys) in points.items():
        ax.scatter(xs, ys, label=label, s=28)
        if annotate is not None:
            for x, y, text in zip(xs, ys, annotate[label]):
                ax.annotate(str(text), (x, y), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    if len(points) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
