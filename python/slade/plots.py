"""Figures of a pipeline run, saved as PNG with matplotlib's Agg backend.

- :func:`training_curves`: loss (and its parts) and mined pairs per step of each stage.
- :func:`retrieval_examples`: query images with their top-k neighbours, hits framed green
  and misses red, one block per model (e.g. teacher and student on the same queries).
- :func:`pseudo_label_purity`: cluster sizes coloured by purity against the hidden labels,
  and the distribution of purity over images.
- :func:`mining_diagnostics`: whether mining filters noise (:func:`slade.diagnose`):
  precision of pseudo and mined pairs, kept fractions, ROC-AUCs among pseudo positives.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._durable import write_bytes

__all__ = [
    "training_curves",
    "retrieval_examples",
    "pseudo_label_purity",
    "mining_diagnostics",
    "image_array",
]

_DIAGNOSTIC_BARS = (
    ("pseudo_positive_precision", "precision\npseudo +"),
    ("mined_positive_precision", "precision\nmined +"),
    ("mined_positive_kept", "kept +"),
    ("pseudo_negative_precision", "precision\npseudo -"),
    ("mined_negative_precision", "precision\nmined -"),
    ("mined_negative_kept", "kept -"),
    ("inactive_mined_negative", "inactive\nmined -"),
    ("auc_embedding_pseudo_positive", "AUC cos(f)\namong pseudo +"),
    ("auc_basis_pseudo_positive", "AUC s\namong pseudo +"),
)


def _pyplot() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, image.getvalue())
    _pyplot().close(figure)
    return path


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def training_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike
) -> Path:
    """One column per stage: the total loss and its parts (``loss/...``) over the steps
    (moving average of 1/20 of the run), and below the positive and negative pairs mined."""
    plt = _pyplot()
    stages = [(name, list(h)) for name, h in histories.items() if h]
    columns = max(1, len(stages))
    figure, axes = plt.subplots(2, columns, figsize=(4.2 * columns, 6), squeeze=False)
    for column, (name, history) in enumerate(stages):
        steps = np.array([record["step"] for record in history])
        window = max(1, len(history) // 20)
        loss_axis, pair_axis = axes[0][column], axes[1][column]
        keys = ["loss"] + sorted({k for r in history for k in r if k.startswith("loss/")})
        for key in keys:
            values = np.array([record.get(key, np.nan) for record in history], dtype=float)
            if np.all(np.isnan(values)):
                continue
            loss_axis.plot(steps, _smooth(values, window), label=key, lw=2 if key == "loss" else 1)
        loss_axis.set_title(name)
        loss_axis.set_xlabel("step")
        loss_axis.legend(fontsize=7)
        for key in ("pairs/positive", "pairs/negative"):
            values = np.array([record.get(key, np.nan) for record in history], dtype=float)
            if not np.all(np.isnan(values)):
                pair_axis.plot(steps, _smooth(values, window), label=key)
        pair_axis.set_xlabel("step")
        pair_axis.set_ylabel("pairs per batch")
        if pair_axis.lines:
            pair_axis.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def image_array(dataset: Any, index: int) -> np.ndarray:
    """Image ``index`` of a slade dataset as a displayable uint8 array (H, W) or (H, W, 3)."""
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        return images[index].numpy()
    return np.asarray(dataset.load_image(index))


def retrieval_examples(
    models: Mapping[str, Mapping[str, torch.Tensor]],
    queries: Sequence[int],
    path: str | os.PathLike,
    *,
    query_image: Callable[[int], np.ndarray],
    reference_image: Callable[[int], np.ndarray] | None = None,
    top_k: int = 8,
) -> Path:
    """Rows of ``query | top_k nearest references`` for each model, the same queries each.

    Args:
        models: model name -> ``{"query": (N, D) embeddings, "query_labels": (N,)}`` plus
            ``"reference"`` and ``"reference_labels"`` for a separate gallery (In-shop);
            without them the queries search each other (a query never finds itself).
        queries: the query indices shown.
        query_image, reference_image: the displayable image of a query / reference index.
    """
    from .retrieval import knn

    plt = _pyplot()
    reference_image = reference_image or query_image
    rows = len(models) * len(queries)
    figure, axes = plt.subplots(
        rows, top_k + 1, figsize=(1.3 * (top_k + 1), 1.45 * rows), squeeze=False
    )
    chosen = torch.as_tensor(list(queries), dtype=torch.int64)
    row = 0
    for name, view in models.items():
        labels = view["query_labels"]
        reference = view.get("reference")
        reference_labels = view.get("reference_labels", labels)
        if reference is not None:
            _, neighbours = knn(view["query"][chosen], reference, k=top_k)
        else:
            _, neighbours = knn(view["query"], k=top_k)
            neighbours = neighbours[chosen]
        for query, found in zip(queries, neighbours.tolist()):
            _show(axes[row][0], query_image(query), f"{name}: query", None)
            for column, neighbour in enumerate(found, start=1):
                hit = int(reference_labels[neighbour]) == int(labels[query])
                _show(axes[row][column], reference_image(neighbour), None, hit)
            row += 1
    figure.suptitle("nearest neighbours (green frame: same class, red: other class)", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def search_grid(results: Sequence[Any], path: str | os.PathLike) -> Path:
    """Rows of ``query | its neighbours`` for :func:`slade.deploy.search_images` results,
    each neighbour titled with its distance; gallery ids that are image files are shown."""
    from PIL import Image

    def picture(file: str | None) -> np.ndarray:
        if file is None or not Path(file).is_file():
            return np.ones((8, 8))
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB"))

    plt = _pyplot()
    columns = 1 + max(len(r.indices) for r in results)
    figure, axes = plt.subplots(
        len(results), columns, figsize=(1.3 * columns, 1.45 * len(results)), squeeze=False
    )
    for row, result in zip(axes, results):
        _show(row[0], picture(result.query), "query", None)
        for column, distance in enumerate(result.distances, start=1):
            file = result.ids[column - 1] if result.ids is not None else None
            _show(row[column], picture(file), f"{distance:.3f}", None)
        for axis in row[1 + len(result.indices) :]:
            axis.axis("off")
    figure.suptitle("nearest gallery images (title: Euclidean distance)", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def _show(axis: Any, image: np.ndarray, title: str | None, hit: bool | None) -> None:
    axis.imshow(image, cmap="gray" if image.ndim == 2 else None)
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=7)
    if hit is not None:
        for spine in axis.spines.values():
            spine.set_edgecolor("tab:green" if hit else "tab:red")
            spine.set_linewidth(3)


def cluster_purity(pseudo_labels: Any, hidden_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster: its size and the fraction of its images in its most common hidden class."""
    clusters = np.asarray(pseudo_labels, dtype=np.int64)
    classes = np.asarray(hidden_labels, dtype=np.int64)
    k = int(clusters.max()) + 1 if clusters.size else 0
    c = int(classes.max()) + 1 if classes.size else 0
    table = np.bincount(clusters * c + classes, minlength=k * c).reshape(k, c)
    sizes = table.sum(axis=1)
    purity = np.divide(table.max(axis=1), sizes, out=np.zeros(k), where=sizes > 0)
    return sizes, purity


def pseudo_label_purity(
    pseudo_labels: Any, hidden_labels: Any, path: str | os.PathLike, *, title: str = "pseudo labels"
) -> Path:
    """Cluster sizes (largest first) coloured by purity, and purity weighted by images."""
    plt = _pyplot()
    sizes, purity = cluster_purity(pseudo_labels, hidden_labels)
    order = np.argsort(-sizes, kind="stable")
    figure, (bars, histogram) = plt.subplots(1, 2, figsize=(10, 3.4))
    colours = plt.get_cmap("viridis")(purity[order])
    bars.bar(np.arange(len(order)), sizes[order], color=colours, width=1.0)
    bars.set_xlabel("cluster (largest first)")
    bars.set_ylabel("images")
    bars.set_title(f"{title}: cluster sizes, colour = purity")
    scalar = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, 1))
    figure.colorbar(scalar, ax=bars, label="purity")
    nonempty = sizes > 0
    histogram.hist(purity[nonempty], bins=np.linspace(0, 1, 21), weights=sizes[nonempty])
    overall = (purity * sizes).sum() / max(1, sizes.sum())
    histogram.axvline(overall, color="k", ls="--", label=f"overall {overall:.3f}")
    histogram.set_xlabel("cluster purity")
    histogram.set_ylabel("images")
    histogram.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def mining_diagnostics(
    diagnostics: Mapping[str, Mapping[str, Any]], path: str | os.PathLike
) -> Path:
    """Bars of :func:`slade.diagnose`'s pair diagnostics (one colour per round) and, beside
    them, the gradient norm of each loss term at the embeddings."""
    plt = _pyplot()
    figure, (bars, norms) = plt.subplots(
        1, 2, figsize=(13, 3.6), gridspec_kw={"width_ratios": [3, 1]}
    )
    width = 0.8 / max(1, len(diagnostics))
    for number, (name, found) in enumerate(diagnostics.items()):
        pairs = found.get("pairs", {})
        values = [pairs.get(key, np.nan) for key, _ in _DIAGNOSTIC_BARS]
        x = np.arange(len(values)) + number * width
        bars.bar(x, values, width=width, label=name)
        grads = found.get("gradient_norms", {})
        norms.bar(np.arange(len(grads)) + number * width, list(grads.values()), width=width)
        norms.set_xticks(np.arange(len(grads)), list(grads))
    bars.set_xticks(np.arange(len(_DIAGNOSTIC_BARS)), [label for _, label in _DIAGNOSTIC_BARS])
    bars.tick_params(axis="x", labelsize=7)
    bars.set_ylim(0, 1.05)
    bars.set_title("unlabeled pairs: does mining filter noise?")
    bars.legend(fontsize=7)
    norms.set_title("gradient norm at the embeddings")
    figure.tight_layout()
    return _save(figure, path)
