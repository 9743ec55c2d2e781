"""What the drop-in modules of :mod:`slade.losses` and :mod:`slade.miners` share with
pytorch-metric-learning (PML) 2.9.0: its optional constructor arguments, accepted where they
leave PML's default behaviour, refused by name otherwise, and its ``ref_emb`` call form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .errors import NotSupportedError

#: The distance PML's losses and miners use unless given one: (class, settings).
EUCLIDEAN = ("LpDistance", {"p": 2, "power": 1, "normalize_embeddings": True})
COSINE = ("CosineSimilarity", {"p": 2, "power": 1, "normalize_embeddings": True})


def _is_default(value: Any, default: tuple[str, Mapping[str, Any]]) -> bool:
    """Whether ``value`` is PML's object ``default`` (its class name, with those settings)."""
    name, settings = default
    cls = type(value)
    return (
        cls.__name__ == name
        and cls.__module__.startswith("pytorch_metric_learning.")
        and all(getattr(value, key, None) == setting for key, setting in settings.items())
    )


def check_options(
    owner: str,
    options: Mapping[str, Any],
    *,
    distance: tuple[str, Mapping[str, Any]],
    reducer: str | None,
) -> None:
    """Checks PML's optional arguments of ``owner``: ``distance`` and ``reducer`` may be
    left out or be PML's default ones (``reducer=None`` for a miner, which has none),
    ``embedding_regularizer`` must be None (``embedding_reg_weight`` is then unused, as in
    PML) and ``collect_stats`` false. Anything else raises, naming the argument."""
    known = {"distance", "collect_stats"}
    if reducer is not None:
        known |= {"reducer", "embedding_regularizer", "embedding_reg_weight"}
    for name, value in options.items():
        if name not in known:
            raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}")
        if value is None or name == "embedding_reg_weight":
            continue
        if name == "distance" and _is_default(value, distance):
            continue
        if name == "reducer" and _is_default(value, (reducer or "", {})):
            continue
        if name == "collect_stats" and value is False:
            continue
        raise NotSupportedError(
            f"{owner}: {name}={value!r} is not supported; slade implements PML's default "
            f"{name} only (leave it out)"
        )


def require_default(owner: str, name: str, value: Any, default: Any) -> None:
    """Refuses a PML argument slade implements only at its default value."""
    if value != default:
        raise NotSupportedError(
            f"{owner}: {name}={value!r} is not supported; slade implements {name}={default!r} "
            "only (PML's default)"
        )


def refuse_ref_emb(owner: str, ref_emb: torch.Tensor | None, ref_labels: Any) -> None:
    """PML's ``ref_emb`` / ``ref_labels`` (pairs between two sets) are not implemented."""
    for name, value in (("ref_emb", ref_emb), ("ref_labels", ref_labels)):
        if value is not None:
            raise NotSupportedError(
                f"{owner}: {name} is not supported; slade's losses and miners pair the rows "
                "of one embeddings tensor"
            )
