"""slade.Index against a brute-force search written here in numpy and against faiss's
IndexFlatL2; save/load round trips; bad inputs."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import slade
from slade import (
    DeviceError,
    DtypeError,
    Index,
    InvalidArgumentError,
    NonFiniteError,
    ShapeError,
)
from slade.deploy import index as index_module


def brute_force(gallery, queries, k):
    """Exact float64 neighbours ordered by (distance, gallery index), and their distances."""
    g = np.asarray(gallery, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    d2 = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    order = np.lexsort((np.broadcast_to(np.arange(len(g)), d2.shape), d2), axis=1)[:, :k]
    return np.sqrt(np.take_along_axis(d2, order, axis=1)), order


def grid_points(n, dim, seed):
    """Values on a coarse dyadic grid: many exact ties, every distance exact in float64."""
    rng = np.random.default_rng(seed)
    return (np.round(rng.normal(size=(n, dim)) * 2) / 2).astype(np.float32)


def assert_same_neighbours(result, expected):
    (distances, indices), (expected_d, expected_i) = result, expected
    np.testing.assert_array_equal(indices.cpu().numpy(), expected_i)
    np.testing.assert_allclose(distances.cpu().numpy(), expected_d, rtol=1e-6, atol=0)
    assert distances.dtype == torch.float32 and indices.dtype == torch.int64


def gallery_with_duplicates(dim, seed=0):
    g = grid_points(300, dim, seed)
    g[200:230] = g[5]  # exact duplicates after their original
    g[231] = g[250]  # and one before it
    return g


@pytest.mark.parametrize("dim", [3, 32])  # the k-d tree and the GEMM engine
def test_search_equals_brute_force_with_ties_and_duplicates(dim):
    gallery = gallery_with_duplicates(dim)
    queries = np.concatenate([grid_points(40, dim, seed=1), gallery[[5, 250, 17]]])
    index = slade.Index()
    index.add(gallery)
    for k in (1, 7, 40):
        assert_same_neighbours(index.search(queries, k), brute_force(gallery, queries, k))


def test_k_equal_to_the_gallery_orders_the_whole_gallery():
    gallery = gallery_with_duplicates(16)
    queries = grid_points(5, 16, seed=2)
    index = slade.Index(16)
    index.add(torch.from_numpy(gallery))
    expected = brute_force(gallery, queries, len(gallery))
    assert_same_neighbours(index.search(torch.from_numpy(queries), len(gallery)), expected)


def test_a_query_equal_to_a_gallery_item_finds_it_first_at_distance_zero():
    gallery = np.random.default_rng(3).normal(size=(500, 24)).astype(np.float32)
    index = slade.Index()
    index.add(gallery)
    distances, indices = index.search(gallery[[0, 123, 499]], 5)
    assert indices[:, 0].tolist() == [0, 123, 499]
    assert distances[:, 0].tolist() == [0.0, 0.0, 0.0]
    assert (distances[:, 1] > 0).all()


def test_a_vector_is_one_query():
    gallery = grid_points(100, 12, seed=4)
    index = slade.Index()
    index.add(gallery)
    query = grid_points(1, 12, seed=5)
    distances, indices = index.search(query[0], 6)
    assert distances.shape == indices.shape == (6,)
    expected_d, expected_i = brute_force(gallery, query, 6)
    assert_same_neighbours((distances, indices), (expected_d[0], expected_i[0]))


def test_queries_are_searched_in_blocks(monkeypatch):
    monkeypatch.setattr(index_module, "QUERY_BLOCK", 7)
    gallery, queries = grid_points(200, 20, seed=6), grid_points(30, 20, seed=7)
    index = slade.Index()
    index.add(gallery)
    assert_same_neighbours(index.search(queries, 9), brute_force(gallery, queries, 9))


def test_float64_and_numpy_inputs_are_stored_as_float32():
    gallery = np.random.default_rng(8).normal(size=(300, 16))
    queries = np.random.default_rng(9).normal(size=(20, 16))
    index = slade.Index()
    index.add(gallery)
    assert index.embeddings.dtype == torch.float32
    stored = gallery.astype(np.float32)
    np.testing.assert_array_equal(index.embeddings.numpy(), stored)
    expected = brute_force(stored, queries.astype(np.float32), 10)
    assert_same_neighbours(index.search(queries, 10), expected)


def test_several_adds_equal_one_add():
    rng = np.random.default_rng(10)
    gallery = rng.normal(size=(250, 16)).astype(np.float32)
    labels = rng.integers(0, 9, size=250)
    ids = [f"images/{i}.png" for i in range(250)]
    whole = slade.Index()
    whole.add(gallery, labels, ids)
    parts = slade.Index()
    for start, stop in [(0, 1), (1, 100), (100, 101), (101, 250)]:
        parts.add(torch.from_numpy(gallery[start:stop]), labels[start:stop], ids[start:stop])
    assert len(parts) == len(whole) == 250 and parts.dim == 16
    assert torch.equal(parts.embeddings, torch.from_numpy(gallery))
    assert parts.labels.tolist() == labels.tolist()
    assert parts.ids == ids
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    for ours, theirs in zip(parts.search(queries, 8), whole.search(queries, 8)):
        assert torch.equal(ours, theirs)
    # Joined once: later reads return the same tensor (and list) without copying.
    assert parts.embeddings.data_ptr() == parts.embeddings.data_ptr()
    assert parts.ids is parts.ids


def test_add_copies_its_input():
    gallery = torch.randn(10, 4)
    index = slade.Index()
    index.add(gallery)
    gallery.zero_()
    assert index.embeddings.abs().sum() > 0


def test_labels_and_ids_of_the_neighbours():
    rng = np.random.default_rng(11)
    gallery = rng.normal(size=(120, 8)).astype(np.float32)
    labels = rng.integers(100, 110, size=120)
    ids = [f"gallery/{i:03d}.jpg" for i in range(120)]
    index = slade.Index()
    index.add(gallery, labels=labels, ids=ids)
    _, indices = index.search(rng.normal(size=(4, 8)).astype(np.float32), 3)
    assert index.labels_of(indices).tolist() == labels[indices.numpy()].tolist()
    assert index.ids_of(indices) == [[ids[j] for j in row] for row in indices.tolist()]
    assert index.ids_of(indices[0]) == [ids[j] for j in indices[0].tolist()]
    assert index.ids_of(7) == ids[7]


def test_save_and_load_round_trip_bitwise(tmp_path):
    rng = np.random.default_rng(12)
    gallery = rng.normal(size=(333, 40)).astype(np.float32)
    labels = rng.integers(-5, 50, size=333)
    ids = [f"photos/ü{i}.png" for i in range(333)]
    model = {
        "format": "torchscript",
        "input_size": [3, 224, 224],
        "mean": [0.485, 0.456, 0.406],
        "embedding_dim": 40,
        "run": None,
    }
    index = slade.Index(model=model)
    index.add(gallery[:200], labels[:200], ids[:200])
    index.add(gallery[200:], labels[200:], ids[200:])
    path = tmp_path / "gallery.safetensors"
    index.save(path)
    loaded = slade.Index.load(path)
    assert loaded.embeddings.numpy().tobytes() == gallery.tobytes()
    assert loaded.labels.dtype == torch.int64 and loaded.labels.tolist() == labels.tolist()
    assert loaded.ids == ids and loaded.model == model
    assert len(loaded) == 333 and loaded.dim == 40
    queries = rng.normal(size=(9, 40)).astype(np.float32)
    for ours, theirs in zip(loaded.search(queries, 5), index.search(queries, 5)):
        assert torch.equal(ours, theirs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.safetensors"]


def test_an_index_without_labels_ids_or_model_round_trips(tmp_path):
    gallery = torch.randn(20, 5)
    index = slade.Index()
    index.add(gallery)
    index.save(tmp_path / "plain.safetensors")
    loaded = slade.Index.load(str(tmp_path / "plain.safetensors"))
    assert torch.equal(loaded.embeddings, gallery)
    assert loaded.labels is None and loaded.ids is None and loaded.model is None


def test_agrees_with_faiss_index_flat_l2():
    rng = np.random.default_rng(13)
    gallery = rng.normal(size=(5000, 64)).astype(np.float32)
    queries = rng.normal(size=(200, 64)).astype(np.float32)
    k = 10
    flat = faiss.IndexFlatL2(64)
    flat.add(gallery)
    theirs_d2, theirs = flat.search(queries, k + 1)
    index = slade.Index()
    index.add(gallery)
    distances, indices = index.search(queries, k)
    # Where faiss's k-th and (k+1)-th distances are apart by more than float32 rounding, the
    # neighbour sets are determined and must be equal.
    determined = theirs_d2[:, k] - theirs_d2[:, k - 1] > 1e-4 * theirs_d2[:, k]
    assert determined.mean() > 0.9
    for row in np.flatnonzero(determined):
        assert set(indices[row].tolist()) == set(theirs[row, :k].tolist())
    np.testing.assert_allclose(distances.numpy() ** 2, theirs_d2[:, :k], rtol=1e-4)


@pytest.mark.cuda
def test_cuda_search_equals_brute_force_and_stays_on_the_device(tmp_path):
    gallery = gallery_with_duplicates(32)
    queries = np.concatenate([grid_points(40, 32, seed=14), gallery[[5, 250]]])
    index = slade.Index(device="cuda")
    index.add(gallery[:150], labels=np.arange(150))
    index.add(torch.from_numpy(gallery[150:]).cuda(), labels=np.arange(150, 300))
    distances, indices = index.search(torch.from_numpy(queries).cuda(), 12)
    assert distances.is_cuda and indices.is_cuda and index.labels_of(indices).is_cuda
    assert_same_neighbours((distances, indices), brute_force(gallery, queries, 12))
    index.save(tmp_path / "cuda.safetensors")
    loaded = slade.Index.load(tmp_path / "cuda.safetensors", device="cuda")
    assert loaded.embeddings.is_cuda and torch.equal(loaded.embeddings, index.embeddings)
    assert torch.equal(loaded.search(queries, 12)[1], indices)


def _corrupt(path):
    path.write_bytes(os.urandom(300))


def _truncated(path):
    index = slade.Index()
    index.add(torch.randn(50, 8))
    index.save(path)
    path.write_bytes(path.read_bytes()[:-40])


def _not_an_index(path):
    save_file({"weight": torch.randn(3, 3)}, path)


@pytest.mark.parametrize("make", [_corrupt, _truncated, _not_an_index])
def test_loading_a_file_that_is_not_an_index_names_it(tmp_path, make):
    path = tmp_path / "broken.safetensors"
    make(path)
    with pytest.raises(slade.SladeIOError, match="broken.safetensors"):
        slade.Index.load(path)


def test_loading_a_missing_file_names_it(tmp_path):
    with pytest.raises(slade.MissingFileError, match="absent.safetensors"):
        slade.Index.load(tmp_path / "absent.safetensors")


randn = torch.randn


def filled(n=6, dim=4, labels=False, ids=False):
    index = slade.Index()
    index.add(
        torch.randn(n, dim),
        labels=torch.arange(n) if labels else None,
        ids=[str(i) for i in range(n)] if ids else None,
    )
    return index


BAD_INPUTS = [
    (lambda: filled().search(randn(2, 5), 1), ShapeError, "queries have dimension 5"),
    (lambda: filled().search(randn(2, 2, 4), 1), ShapeError, "queries must have"),
    (lambda: filled().search(torch.zeros(0, 4), 1), InvalidArgumentError, "queries is empty"),
    (lambda: Index(4).search(randn(2, 4), 1), InvalidArgumentError, "empty"),
    (lambda: filled().search(randn(2, 4), 0), InvalidArgumentError, "k must be at least 1"),
    (lambda: filled().search(randn(2, 4), 7), InvalidArgumentError, "k=7 is larger"),
    (lambda: filled().search(randn(2, 4), 2.0), DtypeError, "k must be an int"),
    (lambda: filled().search(torch.ones(2, 4).int(), 1), DtypeError, "queries must be a float"),
    (lambda: filled().search(torch.full((2, 4), float("inf")), 1), NonFiniteError, "queries"),
    (lambda: filled().search([[0.0] * 4], 1), DtypeError, "queries must be a torch.Tensor"),
    (lambda: Index().add(torch.tensor([[0.0, float("nan")]])), NonFiniteError, "embeddings"),
    (lambda: Index().add(np.ones((3, 2), dtype=np.int64)), DtypeError, "embeddings"),
    (lambda: Index().add(randn(4)), ShapeError, "embeddings must have shape"),
    (lambda: Index(3).add(randn(2, 4)), ShapeError, "embeddings have dimension 4"),
    (lambda: Index().add(torch.zeros(0, 4)), InvalidArgumentError, "embeddings is empty"),
    (lambda: Index().add(randn(3, 2), labels=torch.arange(2)), ShapeError, "labels"),
    (lambda: Index().add(randn(3, 2), labels=torch.zeros(3)), DtypeError, "labels"),
    (lambda: Index().add(randn(3, 2), ids=["a", "b"]), ShapeError, "ids has 2"),
    (lambda: Index().add(randn(2, 2), ids=["a", 1]), DtypeError, r"ids\[1\]"),
    (lambda: Index().add(randn(2, 2), ids="ab"), DtypeError, "ids must be a list"),
    (lambda: filled(labels=True).add(randn(2, 4)), InvalidArgumentError, "labels"),
    (lambda: filled().add(randn(2, 4), labels=[1, 2]), DtypeError, "labels"),
    (lambda: filled().add(randn(2, 4), labels=np.arange(2)), InvalidArgumentError, "labels"),
    (lambda: filled(ids=True).add(randn(1, 4)), InvalidArgumentError, "ids"),
    (lambda: filled().labels_of(torch.tensor([0])), InvalidArgumentError, "no labels"),
    (lambda: filled().ids_of(torch.tensor([0])), InvalidArgumentError, "no ids"),
    (lambda: filled(labels=True).labels_of(torch.tensor([6])), InvalidArgumentError, "indices"),
    (lambda: filled(ids=True).ids_of(torch.tensor([0.5])), DtypeError, "indices"),
    (lambda: Index(0), InvalidArgumentError, "dim"),
    (lambda: Index(device="tpu"), InvalidArgumentError, "device"),
    (lambda: Index(device="meta"), DeviceError, "device"),
    (lambda: Index(model={"f": object()}), DtypeError, "model"),
    (lambda: Index(model=[1]), DtypeError, "model"),
    (lambda: Index().save("unused.safetensors"), InvalidArgumentError, "empty"),
]


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_rejected_add_leaves_the_index_unchanged():
    index = filled(labels=True)
    before = index.embeddings.clone()
    with pytest.raises(slade.NonFiniteError):
        index.add(torch.tensor([[float("nan")] * 4]), labels=torch.tensor([0]))
    with pytest.raises(slade.ShapeError):
        index.add(torch.randn(2, 4), labels=torch.arange(3))
    assert len(index) == 6 and torch.equal(index.embeddings, before)
    assert index.labels.tolist() == list(range(6))
