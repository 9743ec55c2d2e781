"""Batch samplers for ``DataLoader(dataset, batch_sampler=...)``.

:class:`MPerClassSampler` builds metric-learning batches: ``batch_size / m`` distinct classes,
``m`` images of each (labels or pseudo labels). :class:`RandomBatchSampler` draws plain random
batches (unlabeled images). Both are seeded and deterministic: the batches of epoch ``e`` depend
only on ``(seed, e)``. Each pass over the sampler is one epoch and advances the epoch counter;
:meth:`set_epoch` sets it (e.g. when resuming from a checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from ..errors import InvalidArgumentError
from .base import as_label_tensor

__all__ = ["MPerClassSampler", "RandomBatchSampler"]


class _PermutationStream:
    """Successive random permutations of ``items``; ``take(k)`` gives the next k, all distinct.

    Every item is drawn once per pass. When a draw straddles two passes, the items left from
    the old pass are taken first and the rest comes from a fresh permutation without them
    (those few items then close the new pass too), so a draw never repeats an item.
    """

    def __init__(self, items: np.ndarray, rng: np.random.Generator) -> None:
        self.items = items
        self.rng = rng
        self.order = rng.permutation(items)
        self.position = 0

    def take(self, count: int) -> np.ndarray:
        end = self.position + count
        if end <= len(self.order):
            self.position = end
            return self.order[end - count : end]
        left = self.order[self.position :]
        fresh = self.rng.permutation(self.items)
        fresh = np.concatenate([fresh[~np.isin(fresh, left)], left])
        need = count - len(left)
        self.order, self.position = fresh, need
        return np.concatenate([left, fresh[:need]])


def _check_seed(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class _EpochBatchSampler(Sampler[list[int]]):
    """``num_batches`` batches per pass; pass ``e`` draws from a generator seeded ``(seed, e)``."""

    def __init__(self, batch_size: int, num_batches: int | None, default: int, seed: int) -> None:
        self.batch_size = _check_positive(batch_size, "batch_size")
        self.num_batches = (
            default if num_batches is None else _check_positive(num_batches, "num_batches")
        )
        self.seed = _check_seed(seed, "seed")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass draws (passes then count up from it)."""
        self.epoch = _check_seed(epoch, "epoch")

    def __len__(self) -> int:
        return self.num_batches

    def _next_epoch_generator(self) -> np.random.Generator:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        return rng


class MPerClassSampler(_EpochBatchSampler):
    """Batches of ``m`` images for each of ``batch_size / m`` distinct classes.

    Classes are visited in shuffled rounds (every class once per round), and within a class
    images are drawn without repetition until all were used. A class with fewer than ``m``
    images contributes all of them plus random repeats (sampling with replacement). Negative
    labels (``UNLABELED``) are never sampled.

    Args:
        labels: one integer label (or pseudo label) per dataset index.
        m: images per class in a batch.
        batch_size: images per batch, a multiple of ``m``.
        num_batches: batches per epoch; default ``len(labeled images) // batch_size``.
        seed: seed of the epoch-wise random generator.
    """

    def __init__(
        self, labels: Any, m: int, batch_size: int, num_batches: int | None = None, seed: int = 0
    ) -> None:
        self.m = _check_positive(m, "m")
        batch_size = _check_positive(batch_size, "batch_size")
        if batch_size % self.m:
            raise InvalidArgumentError(f"batch_size ({batch_size}) must be a multiple of m ({m})")
        self.classes_per_batch = batch_size // self.m
        label_array = as_label_tensor(labels, "labels").numpy()
        usable = np.flatnonzero(label_array >= 0)
        classes, inverse = np.unique(label_array[usable], return_inverse=True)
        self._class_members = [usable[inverse == c] for c in range(len(classes))]
        if len(classes) < self.classes_per_batch:
            raise InvalidArgumentError(
                f"a batch of {batch_size} with m={m} needs "
                f"{self.classes_per_batch} distinct classes, "
                f"but the labels hold {len(classes)}"
            )
        super().__init__(batch_size, num_batches, max(1, len(usable) // batch_size), seed)

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._next_epoch_generator()
        class_rounds = _PermutationStream(np.arange(len(self._class_members)), rng)
        streams: dict[int, _PermutationStream] = {}
        for _ in range(self.num_batches):
            batch = []
            for c in class_rounds.take(self.classes_per_batch).tolist():
                members = self._class_members[c]
                if len(members) < self.m:
                    extra = rng.choice(members, size=self.m - len(members), replace=True)
                    batch.append(np.concatenate([rng.permutation(members), extra]))
                    continue
                if c not in streams:
                    streams[c] = _PermutationStream(members, rng)
                batch.append(streams[c].take(self.m))
            yield np.concatenate(batch).tolist()


class RandomBatchSampler(_EpochBatchSampler):
    """Random batches of distinct indices in ``range(num_samples)``, every index once per pass.

    Args:
        num_samples: dataset length (or the dataset itself).
        batch_size: indices per batch (at most ``num_samples``).
        num_batches: batches per epoch; default ``num_samples // batch_size``. Larger values
            continue into fresh permutations, e.g. to match a labeled sampler's length.
        seed: seed of the epoch-wise random generator.
    """

    def __init__(
        self, num_samples: Any, batch_size: int, num_batches: int | None = None, seed: int = 0
    ) -> None:
        if hasattr(num_samples, "__len__"):
            num_samples = len(num_samples)
        self.num_samples = _check_positive(num_samples, "num_samples")
        batch_size = _check_positive(batch_size, "batch_size")
        if batch_size > self.num_samples:
            raise InvalidArgumentError(
                f"batch_size ({batch_size}) exceeds the {num_samples} samples"
            )
        super().__init__(batch_size, num_batches, self.num_samples // batch_size, seed)

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._next_epoch_generator()
        stream = _PermutationStream(np.arange(self.num_samples), rng)
        for _ in range(self.num_batches):
            yield stream.take(self.batch_size).tolist()
