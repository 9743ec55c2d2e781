"""A gallery of embeddings, searched exactly: :class:`Index`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _durable
from .._convert import as_tensor
from ..errors import (
    DeviceError,
    DtypeError,
    InvalidArgumentError,
    MissingFileError,
    NonFiniteError,
    ShapeError,
    SladeError,
    SladeIOError,
)
from ..retrieval import knn

FORMAT = "slade.index"
FORMAT_VERSION = "1"

# Queries per k-NN call: a search's working space is O(QUERY_BLOCK * k) plus one GEMM block.
QUERY_BLOCK = 4096


class Index:
    """Gallery embeddings (with optional labels and ids) and exact nearest-neighbour search:
    faiss's ``IndexFlatL2`` with the tie rule of :func:`slade.knn`.

    ``search(q, k)`` returns, for each query q, the k gallery items j with the smallest
    Euclidean distance ``d(q, g_j) = ||q - g_j||_2`` (evaluated exactly, in float64 on the
    stored float32 values), nearest first; equal distances are ordered by the smaller gallery
    index j. Gallery indices count the added embeddings from 0 in the order they were added.

    Memory: the embeddings (float32, on ``device``) plus, while a search runs, O(queries x k)
    and one GEMM block (on CUDA the engine also reads a host copy of the gallery, where it
    ranks the candidates exactly). ``add`` copies its input; several ``add`` calls are
    joined into one tensor when the index is next read, each part freed as it is copied.

    Example::

        index = slade.Index(model=sidecar)  # the exported model's JSON, as a dict
        index.add(gallery, labels=gallery_labels, ids=gallery_paths)
        distances, indices = index.search(queries, k=10)
        index.labels_of(indices), index.ids_of(indices)
        index.save("gallery.safetensors")

    Args:
        dim: the embedding dimension; ``None`` takes it from the first ``add``.
        device: where embeddings are kept and searched: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        model: a JSON-serialisable dict describing the model that made the embeddings (the
            exported model's JSON sidecar), saved with the index; ``None`` for none.
    """

    def __init__(self, dim: int | None = None, *, device: Any = "cpu", model: Any = None):
        if dim is not None and (not _is_int(dim) or dim < 1):
            raise InvalidArgumentError(f"dim must be a positive int or None, got {dim!r}")
        self._dim = None if dim is None else int(dim)
        self._device = _device(device)
        self._model = _model_json(model)
        self._size = 0
        self._chunks: list[torch.Tensor] = []
        self._label_chunks: list[torch.Tensor] = []
        self._ids: list[str] = []
        self._has_labels = False
        self._has_ids = False

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        extras = "".join(
            f", {name}"
            for name, has in (("labels", self._has_labels), ("ids", self._has_ids))
            if has
        )
        return f"Index({self._size} x {self._dim}, device={self._device}{extras})"

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def embeddings(self) -> torch.Tensor:
        """``(N, dim)`` float32 on the index's device: the index's own tensor, not a copy."""
        if not self._chunks:
            return torch.empty((0, self._dim or 0), device=self._device)
        self._chunks = _joined(self._chunks)
        return self._chunks[0]

    @property
    def labels(self) -> torch.Tensor | None:
        """``(N,)`` int64 labels on the index's device, or ``None`` if added without."""
        if not self._has_labels:
            return None
        self._label_chunks = _joined(self._label_chunks)
        return self._label_chunks[0]

    @property
    def ids(self) -> list[str] | None:
        """The ids, the index's own list (not a copy: reading it costs nothing), or ``None``
        if added without."""
        return self._ids if self._has_ids else None

    @property
    def model(self) -> dict | None:
        """The model description saved with the index (a copy), or ``None``."""
        return None if self._model is None else json.loads(self._model)

    @model.setter
    def model(self, model: Any) -> None:
        self._model = _model_json(model)

    def add(self, embeddings: Any, labels: Any = None, ids: Sequence[str] | None = None) -> None:
        """Appends embeddings (copied) with their labels and ids.

        Args:
            embeddings: ``(N, dim)`` float tensor (any device) or numpy array; stored as
                float32.
            labels: ``(N,)`` integer labels, or ``None``. Either every ``add`` passes labels
                or none does; the same holds for ``ids``.
            ids: N strings (image paths, say), or ``None``.
        """
        self._add(embeddings, labels, ids, copy=True)

    def search(self, queries: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k nearest gallery items of each query (see the class docs for the order).

        Args:
            queries: ``(M, dim)`` float tensor (any device) or numpy array; a ``(dim,)``
                vector is one query.
            k: neighbours per query, 1 <= k <= len(index).

        Returns:
            ``(distances, indices)`` on the index's device, each ``(M, k)`` (``(k,)`` for one
            query): Euclidean distances (float32, not squared as faiss's ``IndexFlatL2``
            reports them) and gallery indices (int64). ``labels_of(indices)`` and
            ``ids_of(indices)`` name the neighbours.
        """
        if self._size == 0:
            raise InvalidArgumentError("the index is empty: add embeddings before searching")
        if not _is_int(k):
            raise DtypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise InvalidArgumentError(f"k must be at least 1, got {k}")
        if k > self._size:
            raise InvalidArgumentError(
                f"k={k} is larger than the gallery: the index holds {self._size} embedding(s)"
            )
        q = _float_rows(queries, "queries", self._dim, ndims=(1, 2))
        q = q.to(self._device, torch.float32)
        _check_finite(q, "queries")
        rows = q.reshape(-1, q.shape[-1])
        gallery = self.embeddings
        parts = [
            knn(rows[start : start + QUERY_BLOCK], gallery, k=int(k))
            for start in range(0, len(rows), QUERY_BLOCK)
        ]
        distances = torch.cat([d for d, _ in parts])
        indices = torch.cat([i for _, i in parts])
        if q.dim() == 1:
            return distances[0], indices[0]
        return distances, indices

    def labels_of(self, indices: Any) -> torch.Tensor:
        """The labels of gallery items: a tensor shaped as ``indices`` (``search``'s)."""
        labels = self.labels
        if labels is None:
            raise InvalidArgumentError("the index has no labels: pass labels= to add")
        return labels[self._positions(indices).to(labels.device)]

    def ids_of(self, indices: Any) -> Any:
        """The ids of gallery items, as nested lists shaped as ``indices`` (``search``'s)."""
        if not self._has_ids:
            raise InvalidArgumentError("the index has no ids: pass ids= to add")
        return _map_nested(self._positions(indices).tolist(), self._ids.__getitem__)

    def save(self, path: str | Path) -> None:
        """Writes the index to one ``.safetensors`` file, atomically and durably: tensors
        ``embeddings`` (float32), ``labels`` (int64, if any) and ``ids`` (the UTF-8 JSON list
        of ids as uint8, if any: ids can exceed the 100 MB a safetensors header may hold);
        metadata ``format`` = ``"slade.index"``, ``format_version`` and ``model`` (JSON)."""
        from safetensors.torch import save_file

        if self._size == 0:
            raise InvalidArgumentError("the index is empty: add embeddings before saving")
        tensors = {"embeddings": self.embeddings.cpu()}
        labels = self.labels
        if labels is not None:
            tensors["labels"] = labels.cpu()
        if self._has_ids:
            tensors["ids"] = torch.frombuffer(
                bytearray(json.dumps(self._ids).encode()), dtype=torch.uint8
            )
        metadata = {"format": FORMAT, "format_version": FORMAT_VERSION}
        if self._model is not None:
            metadata["model"] = self._model
        _durable.write_with(Path(path), lambda temporary: save_file(tensors, temporary, metadata))

    @classmethod
    def load(cls, path: str | Path, device: Any = "cpu") -> Index:
        """Reads an index written by :meth:`save` onto ``device``. A missing file raises
        :class:`~slade.MissingFileError`, one that is not a slade index (corrupt, truncated,
        another safetensors file) :class:`~slade.SladeIOError`, each naming the file."""
        from safetensors import SafetensorError, safe_open

        index = cls(device=device)
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"index file {path} does not exist")
        try:
            with safe_open(path, framework="pt", device="cpu") as file:
                metadata = file.metadata() or {}
                if metadata.get("format") != FORMAT or "embeddings" not in file.keys():
                    raise SladeIOError(
                        f"{path} is not a slade index: a safetensors file without the "
                        f"'format': {FORMAT!r} metadata and the 'embeddings' tensor"
                    )
                tensors = {name: file.get_tensor(name) for name in file.keys()}
        except SafetensorError as error:
            raise SladeIOError(f"{path} is not a readable safetensors file: {error}") from error
        if metadata.get("format_version") != FORMAT_VERSION:
            raise SladeIOError(
                f"{path} holds slade index format version {metadata.get('format_version')!r}; "
                f"this slade reads version {FORMAT_VERSION}"
            )
        try:
            ids = json.loads(tensors["ids"].numpy().tobytes()) if "ids" in tensors else None
            index.model = json.loads(metadata["model"]) if "model" in metadata else None
            index._add(tensors["embeddings"], tensors.get("labels"), ids, copy=False)
        except (SladeError, ValueError) as error:
            raise SladeIOError(f"{path} is not a valid slade index: {error}") from error
        return index

    def _add(self, embeddings: Any, labels: Any, ids: Any, *, copy: bool) -> None:
        x = _float_rows(embeddings, "embeddings", self._dim, ndims=(2,))
        n = len(x)
        if labels is not None:
            labels = as_tensor(labels, "labels")
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise DtypeError(f"labels must be integers, got {labels.dtype}")
            if tuple(labels.shape) != (n,):
                raise ShapeError(
                    f"labels must have shape ({n},), one per embedding, got {tuple(labels.shape)}"
                )
        if ids is not None:
            ids = _check_ids(ids, n)
        if self._size:
            _same_as_before("labels", labels is not None, self._has_labels, self._size)
            _same_as_before("ids", ids is not None, self._has_ids, self._size)
        x = x.to(self._device, torch.float32, memory_format=torch.contiguous_format, copy=copy)
        _check_finite(x, "embeddings")
        self._chunks.append(x)
        if labels is not None:
            self._label_chunks.append(labels.to(self._device, torch.int64, copy=copy))
        if ids is not None:
            self._ids.extend(ids)
        self._dim = x.shape[1]
        self._has_labels = labels is not None
        self._has_ids = ids is not None
        self._size += n

    def _positions(self, indices: Any) -> torch.Tensor:
        if not isinstance(indices, (torch.Tensor, np.ndarray)):
            try:
                indices = torch.as_tensor(indices)
            except (TypeError, ValueError, RuntimeError) as error:
                raise DtypeError(
                    f"indices must be gallery indices (ints), got {indices!r}"
                ) from error
        positions = as_tensor(indices, "indices")
        if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
            raise DtypeError(f"indices must be integers, got {positions.dtype}")
        if positions.numel() and (positions.min() < 0 or positions.max() >= self._size):
            raise InvalidArgumentError(
                f"indices must lie in [0, {self._size}), got values from {int(positions.min())} "
                f"to {int(positions.max())}"
            )
        return positions


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _device(device: Any) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise DtypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise InvalidArgumentError(f"device {device!r} is not a device name: {error}") from error
    if parsed.type not in ("cpu", "cuda"):
        raise DeviceError(f"device must be a CPU or CUDA device, got {device!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asks for CUDA, but no CUDA device is available")
    return parsed


def _model_json(model: Any) -> str | None:
    if model is None:
        return None
    if not isinstance(model, Mapping):
        raise DtypeError(f"model must be a dict (or None), got {type(model).__name__}")
    try:
        return json.dumps(dict(model), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise DtypeError(f"model must be JSON-serialisable: {error}") from error


def _float_rows(value: Any, name: str, dim: int | None, ndims: tuple[int, ...]) -> torch.Tensor:
    x = as_tensor(value, name)
    if not x.is_floating_point():
        raise DtypeError(f"{name} must be a float tensor, got {x.dtype}")
    if x.dim() not in ndims:
        shapes = " or ".join({1: "(dim,)", 2: "(N, dim)"}[d] for d in ndims)
        raise ShapeError(f"{name} must have shape {shapes}, got {tuple(x.shape)}")
    if x.numel() == 0:
        raise InvalidArgumentError(f"{name} is empty (shape {tuple(x.shape)})")
    if dim is not None and x.shape[-1] != dim:
        raise ShapeError(
            f"{name} have dimension {x.shape[-1]}, but the index holds {dim}-d embeddings"
        )
    return x


def _check_finite(x: torch.Tensor, name: str) -> None:
    # NaN or Inf anywhere makes the sum non-finite: one pass and no temporary when all is well.
    if torch.isfinite(x.sum()):
        return
    bad = ~torch.isfinite(x.reshape(-1, x.shape[-1])).all(dim=1)
    if bad.any():
        raise NonFiniteError(
            f"{name} hold NaN or Inf in {int(bad.sum())} row(s), the first row {int(bad.nonzero()[0, 0])}"
        )


def _check_ids(ids: Any, n: int) -> list[str]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise DtypeError(f"ids must be a list of str, one per embedding, got {type(ids).__name__}")
    if len(ids) != n:
        raise ShapeError(f"ids has {len(ids)} entries for {n} embeddings")
    for position, value in enumerate(ids):
        if not isinstance(value, str):
            raise DtypeError(f"ids must be str, but ids[{position}] is {type(value).__name__}")
    return list(ids)


def _same_as_before(name: str, given: bool, before: bool, size: int) -> None:
    if given != before:
        earlier = "with" if before else "without"
        raise InvalidArgumentError(
            f"{name}: the index holds {size} embeddings added {earlier} {name}; pass {name} "
            f"for every add or for none"
        )


def _joined(chunks: list[torch.Tensor]) -> list[torch.Tensor]:
    """One tensor of the chunks' rows; each chunk is replaced by a view of the result as
    soon as it is copied, so that its memory is freed while the others are copied."""
    if len(chunks) == 1:
        return chunks
    first = chunks[0]
    out = torch.empty(
        (sum(len(c) for c in chunks), *first.shape[1:]), dtype=first.dtype, device=first.device
    )
    del first
    row = 0
    for position in range(len(chunks)):
        rows = len(chunks[position])
        out[row : row + rows] = chunks[position]
        chunks[position] = out[row : row + rows]
        row += rows
    return [out]


def _map_nested(value: Any, function: Any) -> Any:
    if isinstance(value, list):
        return [_map_nested(v, function) for v in value]
    return function(value)
