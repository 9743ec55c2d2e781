"""MPerClassSampler and RandomBatchSampler: batch structure, determinism, coverage, errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from slade.data import UNLABELED, ImageTensorDataset, MPerClassSampler, RandomBatchSampler
from slade.errors import InvalidArgumentError


def _labels(per_class: list[int], seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    return np.random.default_rng(seed).permutation(labels)


def test_batches_hold_m_images_of_distinct_classes():
    labels = _labels([8, 9, 10, 11, 12, 13])
    sampler = MPerClassSampler(labels, m=4, batch_size=12, num_batches=20, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    for batch in batches:
        assert len(batch) == 12 and len(set(batch)) == 12
        counts = Counter(labels[batch].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}


def test_classes_are_visited_in_rounds_and_images_covered():
    labels = _labels([8] * 6)
    sampler = MPerClassSampler(labels, m=4, batch_size=12, num_batches=8, seed=2)
    batches = list(sampler)
    visits = Counter(int(labels[b[0]]) for batch in batches for b in np.array(batch).reshape(-1, 4))
    assert set(visits.values()) == {4}  # 8 batches x 3 classes = 4 rounds of the 6 classes
    assert set(np.concatenate(batches).tolist()) == set(range(len(labels)))
    # Within a class, images repeat only after all of them were drawn.
    for c in range(6):
        drawn = [i for batch in batches for i in batch if labels[i] == c]
        assert sorted(drawn[:8]) == sorted(np.flatnonzero(labels == c).tolist())


def test_small_classes_are_sampled_with_replacement():
    labels = _labels([2, 10, 10])
    sampler = MPerClassSampler(labels, m=4, batch_size=12, num_batches=3, seed=0)
    small = set(np.flatnonzero(labels == 0).tolist())
    for batch in sampler:
        taken = [i for i in batch if i in small]
        assert len(taken) == 4 and set(taken) == small


def test_unlabeled_indices_are_never_drawn():
    labels = _labels([6, 6, 6])
    labels[:5] = UNLABELED
    sampler = MPerClassSampler(torch.from_numpy(labels), m=2, batch_size=4, num_batches=30, seed=0)
    drawn = np.concatenate(list(sampler))
    assert np.all(labels[drawn] >= 0)
    assert len(MPerClassSampler(labels, m=2, batch_size=4).__iter__().__next__()) == 4


def test_seeded_and_epoch_wise_deterministic():
    labels = _labels([5, 7, 9, 11])

    def make(seed):
        return MPerClassSampler(labels, m=2, batch_size=4, num_batches=10, seed=seed)

    first, second = make(3), make(3)
    assert list(first) == list(second)
    epoch_one = list(first)
    assert epoch_one != list(make(3))  # the second pass is another epoch
    replay = make(3)
    replay.set_epoch(1)
    assert list(replay) == epoch_one
    assert list(make(4)) != list(make(3))
    assert len(MPerClassSampler(labels, m=2, batch_size=4)) == len(labels) // 4


def test_sampler_feeds_a_dataloader_with_pseudo_labels():
    images = torch.zeros(24, 4, 4, dtype=torch.uint8)
    dataset = ImageTensorDataset(images, torch.zeros(24, dtype=torch.int64), ["x"])
    pseudo = dataset.with_labels(torch.arange(24) % 6, classes=None)
    sampler = MPerClassSampler(pseudo.labels, m=2, batch_size=6, seed=0)
    loader = DataLoader(
        pseudo.with_transform(lambda im: torch.from_numpy(np.array(im))), batch_sampler=sampler
    )
    for batch_images, batch_labels in loader:
        assert batch_images.shape == (6, 4, 4)
        assert sorted(Counter(batch_labels.tolist()).values()) == [2, 2, 2]
    assert len(loader) == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(m=3, batch_size=8), "multiple of m"),
        (dict(m=2, batch_size=10), "5 distinct classes"),
        (dict(m=0, batch_size=8), "m must be"),
        (dict(m=2, batch_size=4, num_batches=0), "num_batches"),
        (dict(m=2, batch_size=4, seed=-1), "seed"),
    ],
)
def test_sampler_argument_errors(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        MPerClassSampler(_labels([4, 4, 4]), **kwargs)


def test_sampler_rejects_float_labels():
    with pytest.raises(TypeError):
        MPerClassSampler(np.array([0.0, 1.0, 1.0, 0.0]), m=2, batch_size=4)


def test_random_batches_cover_every_index_once_per_pass():
    sampler = RandomBatchSampler(23, batch_size=5, num_batches=9, seed=7)
    batches = list(sampler)
    assert len(batches) == 9 and all(len(b) == 5 and len(set(b)) == 5 for b in batches)
    flat = np.concatenate(batches)
    assert sorted(flat[:20].tolist()) == sorted(set(flat[:20].tolist()))  # 4 batches: no repeat yet
    assert set(flat[:25].tolist()) == set(range(23))  # a pass plus 2: every index drawn
    assert batches == list(RandomBatchSampler(23, batch_size=5, num_batches=9, seed=7))
    assert batches != list(sampler)
    assert len(RandomBatchSampler(list(range(23)), batch_size=5)) == 4
    with pytest.raises(InvalidArgumentError, match="exceeds"):
        RandomBatchSampler(3, batch_size=5)
