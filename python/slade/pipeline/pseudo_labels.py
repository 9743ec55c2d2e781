"""Stage ``pseudo_labels_round<r>``: k-means of the teacher's embeddings of the unlabeled
images (Sec 3.2)."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import cluster, distributed
from .._durable import remove_temporary_files, write_bytes, write_json
from .._images import embed_dataset
from ..config import Config
from ..errors import ConfigError, InvalidArgumentError
from ..sharded_kmeans import sharded_kmeans
from .data_loading import data_or_load
from .inputs import as_config, as_model
from .stages import Progress


@dataclass
class PseudoLabels:
    """Pseudo labels of the unlabeled images (Sec 3.2) and how good they are.

    Attributes:
        labels: ``(N,)`` int64 cluster ids in ``[0, k)``, one per unlabeled image.
        k: clusters asked for.
        inertia: k-means objective (sum of squared distances to the centroids).
        sizes: images per cluster.
        quality: against the hidden labels, when the data has them: ``nmi``, ``purity``
            (images in their cluster's majority class / N), ``clusters`` (non-empty) and
            ``classes`` (hidden classes).
    """

    labels: torch.Tensor
    k: int
    inertia: float
    sizes: list[int]
    quality: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "images": int(self.labels.numel()),
            "inertia": self.inertia,
            **self.quality,
        }

    def save(self, folder: str | os.PathLike) -> None:
        """``pseudo_labels.npy`` and ``pseudo_labels.json`` (written last: the done marker)."""
        folder = Path(folder)
        array = io.BytesIO()
        np.save(array, self.labels.cpu().numpy())
        write_bytes(folder / "pseudo_labels.npy", array.getvalue())
        write_json(folder / "pseudo_labels.json", {**self.summary(), "sizes": self.sizes})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PseudoLabels:
        folder = Path(folder)
        info = json.loads((folder / "pseudo_labels.json").read_text())
        labels = torch.from_numpy(np.load(folder / "pseudo_labels.npy"))
        quality = {k: info[k] for k in ("nmi", "purity", "clusters", "classes") if k in info}
        return cls(labels, int(info["k"]), float(info["inertia"]), list(info["sizes"]), quality)


def pseudo_label_quality(pseudo_labels: Any, hidden_labels: Any) -> dict[str, float]:
    """NMI and purity of pseudo labels against the true (hidden) labels."""
    from ..plots import cluster_purity

    pseudo = torch.as_tensor(pseudo_labels).cpu()
    hidden = torch.as_tensor(hidden_labels).cpu()
    sizes, purity = cluster_purity(pseudo.numpy(), hidden.numpy())
    return {
        "nmi": float(cluster.nmi(pseudo, hidden)),
        "purity": float((purity * sizes).sum() / max(1, sizes.sum())),
        "clusters": int((sizes > 0).sum()),
        "classes": int(torch.unique(hidden).numel()),
    }


def pseudo_label(
    source: Any,
    data: Any = None,
    k: int | None = None,
    *,
    config: Config | str | None = None,
    out: str | os.PathLike | None = None,
    **kmeans_options: Any,
) -> Any:
    """Pseudo labels by k-means (Sec 3.2), from embeddings or from a model and data.

    - ``pseudo_label(embeddings, k, iters=20, seed=0, init="k-means++", tol=0.0)`` with a
      tensor or array: :func:`slade.cluster.cluster_labels`, returns the ``(N,)`` labels.
    - ``pseudo_label(teacher, data, k=None, config=..., out=...)`` with a trainer, model,
      ``torch.nn.Module`` of your own or checkpoint path: embeds ``data.unlabeled`` (a
      SemiSupervisedData, or any dataset of images) with the model, clusters the
      L2-normalised embeddings into ``k`` clusters (default ``config.pseudo_labels.k``;
      iterations, init, tol and batch size from the same section, seeded by the run seed)
      and returns :class:`PseudoLabels`, with NMI and
      purity against the hidden labels when known. With ``out``, the labels are saved there
      and a later call with the same ``out`` reads them instead of clustering again.
    """
    if isinstance(source, torch.Tensor) or hasattr(source, "__array__"):
        if k is None and isinstance(data, int):
            k = data
        if k is None:
            raise InvalidArgumentError("pseudo_label(embeddings, k): k is required")
        return cluster.cluster_labels(source, k, **kmeans_options)
    config = as_config(config)
    k = config.pseudo_labels.k if k is None else k
    if out is not None:
        remove_temporary_files(Path(out))
    if out is not None and (Path(out) / "pseudo_labels.json").exists():
        return _saved(out, k)
    pseudo = _clustered(source, data_or_load(data, config), k, config, kmeans_options)
    if out is not None:
        pseudo.save(out)
    return pseudo


def _saved(out: str | os.PathLike, k: int) -> PseudoLabels:
    """The pseudo labels an earlier call saved in ``out``; they must be for ``k`` clusters."""
    saved = PseudoLabels.load(out)
    if saved.k != k:
        raise ConfigError(
            f"{out} holds pseudo labels for k = {saved.k}, not {k}; use another folder"
        )
    return saved


def _clustered(
    source: Any, data: Any, k: int, config: Config, kmeans_options: dict[str, Any]
) -> PseudoLabels:
    """k-means of the model's L2-normalised embeddings of the unlabeled images."""
    p = config.pseudo_labels
    unlabeled = getattr(data, "unlabeled", data)
    if getattr(data, "eval_transform", None) is not None:
        # the teacher sees the pool as it sees test images: no training augmentation
        unlabeled = unlabeled.with_transform(data.eval_transform)
    if k > len(unlabeled):
        raise ConfigError(f"pseudo_labels.k ({k}) exceeds the {len(unlabeled)} unlabeled images")
    model = as_model(source, config.device)
    embeddings = embed_dataset(
        model,
        unlabeled,
        batch_size=p.batch_size,
        num_workers=config.data.num_workers,
        progress=Progress(config.progress).iterate,
        description="embed unlabeled",
        gather=not p.sharded,
    )
    options: dict[str, Any] = {"iters": p.iters, "init": p.init, "tol": p.tol, "seed": config.seed}
    options.update(kmeans_options)
    normalised = torch.nn.functional.normalize(embeddings, dim=1).to(model.device)
    if p.sharded:
        result = sharded_kmeans(normalised, k, **options)
        labels = distributed.gather_rows(result.labels.cpu())
    else:
        result = cluster.kmeans(normalised, k, **options)
        labels = result.labels.cpu()
    sizes = torch.bincount(labels, minlength=k).tolist()
    hidden = getattr(unlabeled, "hidden_labels", None)
    quality = pseudo_label_quality(labels, hidden) if hidden is not None else {}
    return PseudoLabels(labels, k, float(result.inertia), sizes, quality)
