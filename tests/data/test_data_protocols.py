"""Semi-supervised protocols: exact counts and class-disjointness on the real data, the
generic folder layout and the paper pairings on fixture trees.

Real data: Fashion-MNIST from /usr/share/datasets/fashion-mnist (Debian package
dataset-fashion-mnist, installed by scripts/setup.sh) and the Omniglot archives from
``$SLADE_DATA/omniglot`` (default ``<repo>/../shared/data``). The tests fail, saying how to
provide the data, when it is absent: the protocols are the project's reference setting.
"""

from __future__ import annotations

import gzip
import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import slade
from conftest import DATA, FASHION_MNIST, OMNIGLOT_ZIPS
from data_layouts import (
    write_cars_annos,
    write_compcars,
    write_cub,
    write_fashion200k,
    write_folders,
    write_inshop,
    write_nabirds,
)
from slade import _images
from slade.cli import main
from slade.data import (
    PRESET,
    PROTOCOLS,
    UNLABELED,
    FashionMNIST,
    ImageTensorDataset,
    Protocol,
    RandomShift,
    Root,
    SemiSupervisedData,
    UnlabeledDataset,
    cars_compcars,
    cub_nabirds,
    folders,
    load_protocol,
    omniglot_ssl,
    split_classes,
    with_val_in_pool,
)
from slade.errors import ConfigError, InvalidArgumentError, MissingFileError

OMNIGLOT = DATA / "omniglot"


def _raw_idx(name: str) -> np.ndarray:
    """Reads an installed IDX file directly (header offset 16 for images, 8 for labels)."""
    raw = gzip.decompress((FASHION_MNIST / f"{name}.gz").read_bytes())
    offset = 16 if "images" in name else 8
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    return data.reshape(-1, 28, 28) if "images" in name else data


def _names(dataset, labels=None) -> list[str]:
    labels = dataset.labels if labels is None else labels
    return [dataset.classes[int(y)] for y in labels]


# --------------------------------------------------------------------------- fashion-mnist-ssl


@pytest.fixture(scope="module")
def fashion(fashion_mnist_root) -> SemiSupervisedData:
    return load_protocol("fashion-mnist-ssl")


def test_fashion_mnist_ssl_counts_and_classes(fashion):
    classes = list(FashionMNIST.CLASSES)
    assert fashion.counts() == {
        "labeled": {"images": 30000, "classes": 5},
        "test": {"images": 5000, "classes": 5},
        "unlabeled": {"images": 30000, "classes": 5},
    }
    assert fashion.num_labeled_classes == 5 and fashion.labeled.classes == classes[:5]
    assert fashion.test.classes == classes[5:] and fashion.unlabeled.hidden_classes == classes[5:]
    assert not set(fashion.labeled.classes) & set(fashion.test.classes)
    assert fashion.val is None and fashion.gallery is None


def test_fashion_mnist_ssl_parts_are_the_right_images(fashion):
    train_images, train_labels = (
        _raw_idx("train-images-idx3-ubyte"),
        _raw_idx("train-labels-idx1-ubyte"),
    )
    test_images, test_labels = (
        _raw_idx("t10k-images-idx3-ubyte"),
        _raw_idx("t10k-labels-idx1-ubyte"),
    )
    classes = list(FashionMNIST.CLASSES)
    seen, novel = train_labels < 5, train_labels >= 5
    assert np.array_equal(fashion.labeled.images.numpy(), train_images[seen])
    assert _names(fashion.labeled) == [classes[y] for y in train_labels[seen]]
    hidden = fashion.unlabeled.hidden_labels
    assert [fashion.unlabeled.hidden_classes[int(y)] for y in hidden] == [
        classes[y] for y in train_labels[novel]
    ]
    assert np.array_equal(fashion.test.images.numpy(), test_images[test_labels >= 5])
    assert _names(fashion.test) == [classes[y] for y in test_labels[test_labels >= 5]]


def test_fashion_mnist_ssl_items_and_transforms(fashion):
    image, label = fashion.unlabeled[0]
    assert label == UNLABELED and image.shape == (1, 28, 28) and image.dtype == torch.float32
    image, label = fashion.test[0]
    assert label == int(fashion.test.labels[0])
    expected = torch.from_numpy(fashion.test.images[0].numpy().astype(np.float32) / 255.0)
    assert torch.equal(image[0], expected)  # eval preset: ToTensor only
    embed_view = fashion.unlabeled.with_transform(fashion.eval_transform)
    pixels = np.asarray(fashion.unlabeled.load_image(3), dtype=np.float32) / 255.0
    assert torch.equal(embed_view[3][0][0], torch.from_numpy(pixels))
    raw = load_protocol("fashion-mnist-ssl", train_transform=None, eval_transform=None)
    assert isinstance(raw.labeled[0][0], Image.Image)


def test_fashion_mnist_ssl_validation_classes(fashion):
    data = load_protocol("fashion-mnist-ssl", val_classes=2, seed=3)
    again = load_protocol("fashion-mnist-ssl", val_classes=2, seed=3)
    assert data.val is not None and data.val.classes == again.val.classes
    assert len(data.val.classes) == 2 and data.num_labeled_classes == 3
    assert not set(data.val.classes) & set(data.labeled.classes)
    assert set(data.val.classes) | set(data.labeled.classes) == set(fashion.labeled.classes)
    assert len(data.val) + len(data.labeled) == 30000 and len(data.val) == 12000
    assert sorted(set(data.labeled.labels.tolist())) == [0, 1, 2]
    assert (
        data.val.transform is data.eval_transform and data.labeled.transform is data.train_transform
    )
    choices = {tuple(split_classes(fashion.labeled, 2, seed=s)[1].classes) for s in range(6)}
    assert len(choices) > 1


# --------------------------------------------------------------------------- omniglot-ssl


@pytest.fixture(scope="module")
def omniglot(omniglot_root) -> SemiSupervisedData:
    return omniglot_ssl(omniglot_root)


def _alphabets(dataset) -> set[str]:
    return set(dataset.extras["alphabet"].tolist())


def test_omniglot_ssl_counts(omniglot):
    assert omniglot.counts() == {
        "labeled": {"images": 1720, "classes": 86},
        "test": {"images": 500, "classes": 50},
        "unlabeled": {"images": 2620, "classes": 156},
    }
    assert omniglot.num_labeled_classes == 86
    assert _alphabets(omniglot.labeled) == {"Balinese", "Early_Aramaic", "Korean"}
    assert _alphabets(omniglot.unlabeled) == {
        "Japanese_(katakana)",
        "Sanskrit",
        "Tagalog",
        "Greek",
        "Latin",
    }
    assert _alphabets(omniglot.test) == {"Greek", "Latin"}
    assert torch.bincount(omniglot.labeled.labels).tolist() == [20] * 86
    assert torch.bincount(omniglot.test.labels).tolist() == [10] * 50


def test_omniglot_ssl_drawers_and_disjointness(omniglot):
    test_drawers = omniglot.test.extras["drawer"]
    assert sorted(set(test_drawers.tolist())) == list(range(11, 21))
    shared = np.isin(omniglot.unlabeled.extras["alphabet"], ["Greek", "Latin"])
    assert sorted(set(omniglot.unlabeled.extras["drawer"][shared].tolist())) == list(range(1, 11))
    assert int(shared.sum()) == 500
    assert not set(omniglot.labeled.classes) & set(omniglot.test.classes)
    assert not set(omniglot.labeled.classes) & set(omniglot.unlabeled.hidden_classes)
    assert set(omniglot.test.classes) <= set(omniglot.unlabeled.hidden_classes)


def test_omniglot_ssl_pixels_come_from_the_zip(omniglot):
    """One test image against the PNG decoded straight from the archive."""
    raw = omniglot_ssl(OMNIGLOT, image_size=None, train_transform=None, eval_transform=None)
    assert raw.test.images.shape == (500, 105, 105)
    index = 123
    name = raw.test.classes[int(raw.test.labels[index])]
    drawer = int(raw.test.extras["drawer"][index])
    with zipfile.ZipFile(OMNIGLOT / OMNIGLOT_ZIPS[0]) as archive:
        member = next(
            m
            for m in archive.namelist()
            if m.startswith(f"images_background_small1/{name}/")
            and m.endswith(f"_{drawer:02d}.png")
        )
        png = Image.open(io.BytesIO(archive.read(member))).convert("L")
    assert np.array_equal(raw.test.images[index].numpy(), 255 - np.asarray(png))
    small = np.asarray(png.resize((28, 28), Image.Resampling.BILINEAR))
    row = int(
        np.flatnonzero(
            (np.array(_names(omniglot.test)) == name) & (omniglot.test.extras["drawer"] == drawer)
        )[0]
    )
    assert np.array_equal(omniglot.test.images[row].numpy(), 255 - small)


def test_omniglot_ssl_validation_split(omniglot):
    data = omniglot_ssl(OMNIGLOT, val_classes=0.2, seed=1)
    assert data.val.num_classes == 17 and data.num_labeled_classes == 69
    assert not set(data.val.classes) & set(data.labeled.classes)
    assert len(data.val) == 17 * 20


def test_omniglot_ssl_validation_alphabets(omniglot):
    labeled = {"Balinese": 24, "Early_Aramaic": 22, "Korean": 40}
    held = set()
    for seed in range(6):
        data = omniglot_ssl(OMNIGLOT, val_groups=1, seed=seed)
        (alphabet,) = set(data.val.extras["alphabet"].tolist())
        held.add(alphabet)
        assert data.val.num_classes == labeled[alphabet]
        assert data.num_labeled_classes == 86 - labeled[alphabet]
        assert alphabet not in set(data.labeled.extras["alphabet"].tolist())
        assert len(data.val) == 20 * labeled[alphabet]
    assert len(held) >= 2  # the seed chooses the alphabet
    two = omniglot_ssl(OMNIGLOT, val_groups=2, seed=0)
    assert len(set(two.val.extras["alphabet"].tolist())) == 2
    with pytest.raises(InvalidArgumentError, match="val_groups"):
        omniglot_ssl(OMNIGLOT, val_groups=3)
    with pytest.raises(ConfigError, match="val_classes"):
        omniglot_ssl(OMNIGLOT, val_groups=1, val_classes=5)


def test_omniglot_ssl_validation_classes_in_the_pool(omniglot):
    data = omniglot_ssl(OMNIGLOT, val_classes=20, seed=0)
    moved = with_val_in_pool(data, 0.5, seed=3)
    assert len(moved.val) == 200 and moved.val.num_classes == 20
    assert len(moved.unlabeled) == len(data.unlabeled) + 200
    # the pool keeps its images first, then 10 drawings of each validation character
    pool = moved.unlabeled._images
    assert torch.equal(pool.images[: len(data.unlabeled)], data.unlabeled._images.images)
    added = _names(pool, moved.unlabeled.hidden_labels[len(data.unlabeled) :])
    assert sorted(set(added)) == sorted(data.val.classes)
    assert all(added.count(name) == 10 for name in set(added))
    assert _names(moved.unlabeled._images)[: len(data.unlabeled)] == _names(data.unlabeled._images)
    # each validation image is either a query or in the pool, never both
    val_rows = {bytes(img.numpy()) for img in data.val.images}
    query_rows = {bytes(img.numpy()) for img in moved.val.images}
    added_rows = {bytes(img.numpy()) for img in pool.images[len(data.unlabeled) :]}
    assert query_rows | added_rows == val_rows and not query_rows & added_rows
    assert moved.val.labels.max() == 19 and moved.labeled is data.labeled
    with pytest.raises(ConfigError, match="val_classes"):
        with_val_in_pool(omniglot_ssl(OMNIGLOT), 0.5)
    with pytest.raises(InvalidArgumentError, match="fraction"):
        with_val_in_pool(data, 1.0)


# --------------------------------------------------------------------------- folders


def test_folders_protocol(tmp_path):
    fixture = write_folders(tmp_path)
    data = load_protocol("folders", tmp_path, train_transform=None, eval_transform=None)
    assert data.labeled.classes == ["cat", "dog", "emu"] and data.test.classes == ["fox", "gnu"]
    assert len(data.unlabeled) == len(fixture["unlabeled"]) and data.unlabeled.hidden_labels is None
    assert data.unlabeled[0][1] == UNLABELED and data.val is None
    pseudo = data.unlabeled.with_labels([0, 1, 1, 0])
    assert pseudo.labels.tolist() == [0, 1, 1, 0]
    gray = folders(tmp_path, style="grayscale", val_classes=1, seed=0)
    assert gray.val.num_classes == 1 and gray.num_labeled_classes == 2
    assert gray.labeled[0][0].shape[0] == 1


def test_folders_with_val_folder_and_errors(tmp_path):
    write_folders(tmp_path)
    (tmp_path / "val" / "hen").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "hen" / "0.png")
    data = folders(tmp_path)
    assert data.val.classes == ["hen"] and data.val[0][0].shape == (3, 224, 224)
    with pytest.raises(ConfigError, match="validation"):
        folders(tmp_path, val_classes=1)
    with pytest.raises(MissingFileError, match="ROOT/labeled/<class>") as err:
        folders(tmp_path / "test")
    assert str(tmp_path / "test" / "labeled") in str(err.value)
    with pytest.raises(ConfigError, match="style"):
        folders(tmp_path, style="sepia")
    with pytest.raises(ConfigError, match="transform"):
        folders(tmp_path, train_transform="fancy")


def test_folders_validation_in_an_unlabeled_pool(tmp_path):
    fixture = write_folders(tmp_path)
    data = folders(tmp_path, val_classes=1, seed=0)
    moved = with_val_in_pool(data, 0.5, seed=0)
    assert len(moved.val) + len(moved.unlabeled) == len(data.val) + len(fixture["unlabeled"])
    assert moved.unlabeled.hidden_labels is None  # the folder pool has no labels to keep
    assert moved.unlabeled[len(moved.unlabeled) - 1][1] == UNLABELED
    assert moved.unlabeled[len(moved.unlabeled) - 1][0].shape == data.unlabeled[0][0].shape


def test_split_classes_arguments(tmp_path):
    write_folders(tmp_path)
    labeled = load_protocol("folders", tmp_path).labeled
    with pytest.raises(InvalidArgumentError):
        split_classes(labeled, 3)
    with pytest.raises(InvalidArgumentError):
        split_classes(labeled, 1.5)
    with pytest.raises(InvalidArgumentError):
        folders(tmp_path, val_classes=-1)
    rest, held = split_classes(labeled, 1, seed=5)
    assert len(rest) + len(held) == len(labeled) and held.num_classes == 1


def test_unknown_protocol():
    with pytest.raises(ConfigError, match="omniglot-ssl"):
        load_protocol("mnist-ssl")
    assert set(PROTOCOLS) == {
        "fashion-mnist-ssl",
        "omniglot-ssl",
        "folders",
        "cub-nabirds",
        "cars-compcars",
        "inshop-fashion200k",
    }
    assert PRESET == "preset"


# --------------------------------------------------------------------------- paper pairings


def test_cub_nabirds(tmp_path):
    write_cub(tmp_path / "cub", num_classes=4)
    fixture = write_nabirds(tmp_path / "nab")
    data = cub_nabirds(tmp_path / "cub", tmp_path / "nab")
    assert data.labeled.classes == ["001.Species_A", "002.Species_B"]
    assert data.test.classes == ["003.Species_C", "004.Species_D"]
    assert len(data.unlabeled) == len(fixture["images"])
    assert data.labeled[0][0].shape == (3, 224, 224) and data.test[0][0].shape == (3, 224, 224)
    hidden_names = [data.unlabeled.hidden_classes[int(y)] for y in data.unlabeled.hidden_labels]
    assert hidden_names == [fixture["classes"][c] for c in fixture["labels"]]


def test_cub_nabirds_excludes_species_by_name(tmp_path):
    cub = write_cub(tmp_path / "cub", num_classes=4)
    for name, new in (
        ("003.Species_C", "003.Black_footed_Albatross"),
        ("001.Species_A", "001.Bobolink"),
    ):
        text = (cub["base"] / "classes.txt").read_text()
        (cub["base"] / "classes.txt").write_text(text.replace(name, new))
    write_nabirds(tmp_path / "nab")
    test_only = cub_nabirds(tmp_path / "cub", tmp_path / "nab", exclude_cub_species="test")
    assert "Black-footed Albatross" not in test_only.unlabeled.hidden_classes
    assert "Bobolink (Breeding male)" in test_only.unlabeled.hidden_classes
    assert len(test_only.unlabeled) == 8 - 3
    both = cub_nabirds(tmp_path / "cub", tmp_path / "nab", exclude_cub_species="all")
    assert len(both.unlabeled) == 8 - 3 - 2
    with pytest.raises(ConfigError):
        cub_nabirds(tmp_path / "cub", tmp_path / "nab", exclude_cub_species="train")


def test_cars_compcars(tmp_path):
    write_cars_annos(tmp_path / "cars")
    fixture = write_compcars(tmp_path / "compcars")
    data = cars_compcars(tmp_path / "cars", tmp_path / "compcars", val_classes=1)
    assert data.num_labeled_classes == 1 and data.val.num_classes == 1
    assert data.test.num_classes == 2 and len(data.unlabeled) == len(fixture["all"])
    listed = cars_compcars(tmp_path / "cars", tmp_path / "compcars", compcars_split="train")
    assert len(listed.unlabeled) == len(fixture["lists"]["train"])


def test_inshop_fashion200k(tmp_path):
    write_inshop(tmp_path / "inshop")
    fixture = write_fashion200k(tmp_path / "f200k")
    data = load_protocol("inshop-fashion200k", tmp_path / "inshop", tmp_path / "f200k")
    assert data.labeled.classes == ["id_00000001", "id_00000002"]
    assert data.test.classes == data.gallery.classes
    assert len(data.unlabeled) == len(fixture["written"]["train"])
    counts = data.counts()
    assert counts["test"]["images"] == 3 and counts["gallery"]["images"] == 5
    assert counts["unlabeled"]["classes"] == 3
    assert data.gallery.transform is data.eval_transform


# --------------------------------------------------------------------------- registry


def _toy_protocol(calls: list) -> Protocol:
    """A protocol of 8 blank in-memory images of 2 classes, recording how it was called."""

    def toy(root, *, image_size, train_transform, eval_transform, val_classes=0, seed=0):
        calls.append({"root": root, "image_size": image_size, "train": train_transform})
        images = torch.zeros(8, image_size, image_size, dtype=torch.uint8)
        part = ImageTensorDataset(images, torch.arange(8) % 2, ["a", "b"])
        return SemiSupervisedData(
            "toy",
            part.with_transform(train_transform),
            UnlabeledDataset(part.with_transform(train_transform)),
            part.with_transform(eval_transform),
            train_transform=train_transform,
            eval_transform=eval_transform,
        )

    roots = (Root("root", "--data", "the toy folder"),)
    return Protocol("toy", toy, roots, "grayscale", "toy images", image_size=9, in_memory=True)


def test_load_data_config_validation_and_the_cli_read_the_registry(
    tmp_path, monkeypatch, capsys
):
    calls = []
    monkeypatch.setitem(PROTOCOLS, "toy", _toy_protocol(calls))
    overrides = ["data.protocol=toy", "data.image_size=None", "data.shift=3"]
    config = slade.config.preset("fashion-mnist-ssl", overrides)  # validates against the registry
    missing = r"data\.root is required .*the toy folder \(e\.g\. --data PATH\)"
    with pytest.raises(ConfigError, match=missing):
        slade.load_data(config)
    config.data.root = str(tmp_path)
    data = slade.load_data(config)
    assert calls[-1]["root"] == str(tmp_path) and calls[-1]["image_size"] == 9  # the entry's
    shift, to_tensor = calls[-1]["train"].transforms  # the grayscale defaults, data.shift
    assert isinstance(shift, RandomShift) and shift.max_shift == 3
    assert type(to_tensor).__name__ == "ToTensor"
    assert tuple(data.labeled[0][0].shape) == (1, 9, 9)
    slade.load_data(slade.config.preset("fashion-mnist-ssl", overrides + [f"data.root={tmp_path}"]))
    assert calls[-1]["image_size"] == 9
    with pytest.raises(ConfigError, match="data.val_groups .*no class groups; .* omniglot-ssl"):
        slade.config.preset("fashion-mnist-ssl", overrides + ["data.val_groups=1"])
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert "\ntoy                 toy images\n" in listed and "--data: the toy folder" in listed


def test_data_image_size_resizes_folders_images(tmp_path):
    write_folders(tmp_path, size=(40, 30))
    base = [f"data.root={tmp_path}", "data.protocol=folders"]

    def shapes(preset: str, *overrides: str) -> set[tuple[int, ...]]:
        data = slade.load_data(slade.config.preset(preset, base + list(overrides)))
        parts = (data.labeled, data.unlabeled, data.test)
        return {tuple(part[i][0].shape) for part in parts for i in range(2)}

    # One channel models read grayscale folders, resized to data.image_size (the preset's 28).
    assert shapes("fashion-mnist-ssl") == {(1, 28, 28)}
    assert shapes("fashion-mnist-ssl", "data.image_size=12") == {(1, 12, 12)}
    assert shapes("fashion-mnist-ssl", "data.image_size=None") == {(1, 30, 40)}  # as stored
    # Three channel models read natural images: crops of data.image_size, default 224.
    assert shapes("cub-nabirds") == {(3, 224, 224)}
    assert shapes("cub-nabirds", "data.image_size=32") == {(3, 32, 32)}
    grayscale = 'data.protocol_options={"style": "grayscale"}'
    assert shapes("cub-nabirds", "data.image_size=32", grayscale) == {(1, 32, 32)}


def test_data_image_size_resizes_fashion_mnist_in_memory(fashion):
    config = slade.config.preset("fashion-mnist-ssl", ["data.image_size=14"])
    data = slade.load_data(config)
    assert tuple(data.labeled.images.shape[1:]) == tuple(data.test.images.shape[1:]) == (14, 14)
    assert _images.tensor_shift(data.labeled) == 0  # still augmented batch-wise in memory
    stored = slade.load_data(slade.config.preset("fashion-mnist-ssl"))  # the preset's 28: as stored
    assert torch.equal(stored.labeled.images, fashion.labeled.images)
