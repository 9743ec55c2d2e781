"""Loaders of slade.data on fixture trees written in each data set's official layout."""

from __future__ import annotations

import gzip
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import slade
from data_layouts import (
    close_colour,
    colour,
    idx_bytes,
    write_cars_annos,
    write_cars_devkit,
    write_compcars,
    write_cub,
    write_fashion200k,
    write_fashion_mnist,
    write_folders,
    write_inshop,
    write_nabirds,
    write_omniglot_zip,
)
from slade.data import (
    CUB200,
    UNLABELED,
    Cars196,
    CompCars,
    Fashion200k,
    FashionMNIST,
    ImageFolderDataset,
    InShop,
    NABirds,
    Omniglot,
    UnlabeledDataset,
    unlabeled_images,
)
from slade.errors import ConfigError, MissingFileError, SladeIOError


def _names(dataset) -> list[str]:
    return [dataset.classes[int(y)] for y in dataset.labels]


# --------------------------------------------------------------------------- CUB-200-2011


def test_cub_splits_first_and_second_half_of_classes(tmp_path):
    fixture = write_cub(tmp_path)
    train, test, every = (CUB200(tmp_path, split) for split in ("train", "test", "all"))
    names = fixture["classes"]
    assert train.classes == names[:2] and test.classes == names[2:]
    assert every.classes == names and len(every) == 12
    assert len(train) == 6 and len(test) == 6
    assert train.labels.dtype == torch.int64
    assert sorted(set(train.labels.tolist())) == [0, 1] and sorted(set(test.labels.tolist())) == [
        0,
        1,
    ]
    assert not set(_names(train)) & set(_names(test))
    # Every item is the file images.txt lists for it, with the class image_class_labels.txt gives.
    expected = {
        fixture["paths"][i]: (names[fixture["labels"][i]], fixture["colours"][i]) for i in range(12)
    }
    for i in range(len(every)):
        image, label = every[i]
        relative = every.paths[i].relative_to(fixture["base"] / "images").as_posix()
        name, fill = expected[relative]
        assert every.classes[label] == name
        assert image.mode == "RGB" and image.size == (20, 16) and close_colour(image, fill)


def test_cub_accepts_the_inner_folder_and_applies_transform(tmp_path):
    write_cub(tmp_path)
    dataset = CUB200(tmp_path / "CUB_200_2011", "test", transform=lambda im: im.size)
    assert dataset[0][0] == (20, 16)
    assert "Split: test" in repr(dataset)


def test_cub_missing_and_malformed_files_name_the_file(tmp_path):
    fixture = write_cub(tmp_path)
    labels_file = fixture["base"] / "image_class_labels.txt"
    text = labels_file.read_text()
    labels_file.write_text(text.replace("3 1\n", "3 one\n"))
    with pytest.raises(SladeIOError, match="not in classes.txt") as err:
        CUB200(tmp_path)
    assert str(labels_file) in str(err.value)
    labels_file.write_text(text.replace("3 1\n", "3\n"))
    with pytest.raises(SladeIOError, match=r"image_class_labels.txt, line 3: expected"):
        CUB200(tmp_path)
    labels_file.unlink()
    with pytest.raises(MissingFileError, match="image_class_labels.txt") as err:
        CUB200(tmp_path)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, slade.SladeError)
    with pytest.raises(MissingFileError, match="images.txt"):
        CUB200(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="split"):
        CUB200(tmp_path, "val")


def test_missing_and_corrupt_images_are_reported_on_access(tmp_path):
    fixture = write_cub(tmp_path)
    dataset = CUB200(tmp_path, "all")
    dataset.paths[0].unlink()
    with pytest.raises(MissingFileError) as err:
        dataset[0]
    assert str(dataset.paths[0]) in str(err.value) and "images.txt" in str(err.value)
    dataset.paths[1].write_bytes(b"\xff\xd8 this is not a JPEG")
    with pytest.raises(SladeIOError, match="cannot decode") as err:
        dataset[1]
    assert str(dataset.paths[1]) in str(err.value) and isinstance(err.value, OSError)
    assert close_colour(dataset[2][0], fixture["colours"][2])


# --------------------------------------------------------------------------- Cars-196


def test_cars_annos_mat_splits_classes_half_and_half(tmp_path):
    fixture = write_cars_annos(tmp_path)
    train, test = Cars196(tmp_path, "train"), Cars196(tmp_path, "test")
    assert train.classes == fixture["classes"][:2] and test.classes == fixture["classes"][2:]
    assert len(train) == 4 and len(test) == 4
    everything = Cars196(tmp_path, "all")
    for i, (relative, cls) in enumerate(fixture["entries"]):
        assert everything.paths[i] == tmp_path / relative
        assert everything.classes[int(everything.labels[i])] == fixture["classes"][cls - 1]
        assert close_colour(everything[i][0], fixture["colours"][i])


def test_cars_devkit_layout(tmp_path):
    fixture = write_cars_devkit(tmp_path / "stanford_cars")
    dataset = Cars196(tmp_path, "all")
    assert dataset.classes == fixture["classes"] and len(dataset) == 8
    train_files = {
        tmp_path / "stanford_cars" / "cars_train" / f for f, _ in fixture["entries"]["train"]
    }
    assert train_files <= set(dataset.paths)
    first, second = Cars196(tmp_path, "train"), Cars196(tmp_path, "test")
    assert first.classes == fixture["classes"][:2] and second.classes == fixture["classes"][2:]
    assert all(close_colour(first[i][0], colour(int(p.stem))) for i, p in enumerate(first.paths))


def test_cars_errors_name_the_files(tmp_path):
    with pytest.raises(MissingFileError, match="cars_annos.mat"):
        Cars196(tmp_path)
    (tmp_path / "cars_annos.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage" + bytes(200))
    with pytest.raises(SladeIOError) as err:
        Cars196(tmp_path)
    assert str(tmp_path / "cars_annos.mat") in str(err.value)


def test_cars_missing_image_folder(tmp_path):
    write_cars_annos(tmp_path)
    shutil.rmtree(tmp_path / "car_ims")
    with pytest.raises(MissingFileError, match="car_ims"):
        Cars196(tmp_path)


# --------------------------------------------------------------------------- In-shop


def test_inshop_partitions_share_item_labels_between_query_and_gallery(tmp_path):
    fixture = write_inshop(tmp_path / "inshop")
    rows = fixture["rows"]
    parts = {split: InShop(tmp_path, split) for split in ("train", "query", "gallery")}
    for split, dataset in parts.items():
        listed = [
            (tmp_path / "inshop" / name, item) for name, item, status in rows if status == split
        ]
        assert [
            (p, dataset.classes[int(y)]) for p, y in zip(dataset.paths, dataset.labels)
        ] == listed
    assert parts["train"].classes == ["id_00000001", "id_00000002"]
    assert (
        parts["query"].classes
        == parts["gallery"].classes
        == ["id_00000004", "id_00000007", "id_00000009"]
    )
    assert not set(parts["train"].classes) & set(parts["query"].classes)
    assert close_colour(
        parts["gallery"][0][0], colour(rows.index(next(r for r in rows if r[2] == "gallery")) + 1)
    )


def test_inshop_count_and_header_are_checked(tmp_path):
    write_inshop(tmp_path)
    listing = tmp_path / "Eval" / "list_eval_partition.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join(["99"] + lines[1:]) + "\n")
    with pytest.raises(SladeIOError, match="announces 99 images") as err:
        InShop(tmp_path)
    assert str(listing) in str(err.value)
    listing.write_text("\n".join(lines[:2] + [lines[2] + " extra"] + lines[3:]) + "\n")
    with pytest.raises(SladeIOError, match="line 3"):
        InShop(tmp_path)
    listing.unlink()
    with pytest.raises(MissingFileError, match="list_eval_partition.txt"):
        InShop(tmp_path)


# --------------------------------------------------------------------------- NABirds


def test_nabirds_labels_number_leaf_classes_in_id_order(tmp_path):
    fixture = write_nabirds(tmp_path)
    dataset = NABirds(tmp_path)
    used = sorted(set(fixture["labels"]))
    assert dataset.classes == [fixture["classes"][c] for c in used]
    assert _names(dataset) == [fixture["classes"][c] for c in fixture["labels"]]
    assert [p.relative_to(fixture["base"] / "images").as_posix() for p in dataset.paths] == [
        p for _, p in fixture["images"]
    ]
    assert close_colour(dataset[3][0], colour(4))
    train, test = NABirds(tmp_path, "train"), NABirds(tmp_path, "test")
    assert len(train) == sum(fixture["train"]) and len(test) == len(fixture["train"]) - sum(
        fixture["train"]
    )
    assert set(train.paths).isdisjoint(test.paths)


def test_nabirds_unknown_class_id(tmp_path):
    fixture = write_nabirds(tmp_path)
    labels = fixture["base"] / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace(" 401\n", " 402\n", 1))
    with pytest.raises(SladeIOError, match="402") as err:
        NABirds(tmp_path)
    assert str(labels) in str(err.value)


# --------------------------------------------------------------------------- CompCars


def test_compcars_lists_and_tree(tmp_path):
    fixture = write_compcars(tmp_path)
    image_dir = fixture["data"] / "image"
    train = CompCars(tmp_path, "train")
    assert [p.relative_to(image_dir).as_posix() for p in train.paths] == fixture["lists"]["train"]
    assert train.classes == ["Model1", "Model3", "Model120"]
    assert _names(train) == [f"Model{p.split('/')[1]}" for p in fixture["lists"]["train"]]
    both = CompCars(tmp_path / "data", "classification")
    assert len(both) == len(fixture["lists"]["train"]) + len(fixture["lists"]["test"])
    every = CompCars(tmp_path, "all")
    assert sorted(p.relative_to(image_dir).as_posix() for p in every.paths) == fixture["all"]
    assert "model_400" not in every.classes and "Model400" in every.classes
    makes = CompCars(tmp_path, "all", label_level="make")
    assert makes.classes == ["Make5", "Make12", "Make78"]
    assert _names(makes) == [f"Make{p.relative_to(image_dir).parts[0]}" for p in makes.paths]
    assert close_colour(train[0][0], colour(1))


def test_compcars_model_without_name_and_bad_list_line(tmp_path):
    fixture = write_compcars(tmp_path)
    (fixture["data"] / "misc" / "make_model_name.mat").unlink()
    assert CompCars(tmp_path, "train").classes == ["model_1", "model_3", "model_120"]
    listing = fixture["data"] / "train_test_split" / "classification" / "test.txt"
    listing.write_text("78/1/oops.jpg\n")
    with pytest.raises(SladeIOError, match="line 1") as err:
        CompCars(tmp_path, "test")
    assert str(listing) in str(err.value)
    with pytest.raises(ConfigError):
        CompCars(tmp_path, "train", label_level="year")


# --------------------------------------------------------------------------- Fashion200k


def test_fashion200k_products_are_the_labels(tmp_path):
    fixture = write_fashion200k(tmp_path)
    train = Fashion200k(tmp_path, "train")
    written = fixture["written"]["train"]
    assert sorted(
        (p.relative_to(tmp_path).as_posix(), train.classes[int(y)])
        for p, y in zip(train.paths, train.labels)
    ) == sorted((r, product) for r, product, _ in written)
    assert sorted(set(train.extras["category"].tolist())) == ["dress", "top"]
    assert len(train.descriptions) == len(train) and all("number" in d for d in train.descriptions)
    assert len(Fashion200k(tmp_path, "all")) == len(written) + len(fixture["written"]["test"])
    dresses = Fashion200k(tmp_path, "train", categories=["dress"])
    assert set(dresses.extras["category"].tolist()) == {"dress"} and len(dresses) == 3
    sub = dresses.subset([2, 0])
    assert sub.descriptions == [dresses.descriptions[2], dresses.descriptions[0]]


def test_fashion200k_missing_lists(tmp_path):
    (tmp_path / "labels").mkdir()
    with pytest.raises(MissingFileError, match="_detect_all.txt"):
        Fashion200k(tmp_path)
    with pytest.raises(ConfigError, match="shoes"):
        Fashion200k(tmp_path, categories=["shoes"])


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_fashion_mnist_reads_idx_files(tmp_path, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    written = write_fashion_mnist(folder)
    for train, key in ((True, "train"), (False, "t10k")):
        dataset = FashionMNIST(tmp_path, train=train)
        images, labels = written[key]
        assert dataset.images.dtype == torch.uint8 and dataset.images.shape == images.shape
        assert np.array_equal(dataset.images.numpy(), images)
        assert np.array_equal(dataset.labels.numpy(), labels.astype(np.int64))
        image, label = dataset[3]
        assert (
            image.mode == "L"
            and np.array_equal(np.asarray(image), images[3])
            and label == labels[3]
        )
    assert FashionMNIST(tmp_path).classes[9] == "Ankle boot"


def test_fashion_mnist_corrupt_files_are_named(tmp_path):
    write_fashion_mnist(tmp_path, gzipped=False)
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(SladeIOError, match="truncated") as err:
        FashionMNIST(tmp_path, train=False)
    assert str(images) in str(err.value)
    images.write_bytes(b"\x89PNG not idx")
    with pytest.raises(SladeIOError, match="not an IDX file"):
        FashionMNIST(tmp_path, train=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    images.write_bytes(idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8)))
    with pytest.raises(SladeIOError, match="labels"):
        FashionMNIST(tmp_path, train=False)
    labels.unlink()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00 broken gzip")
    with pytest.raises(SladeIOError, match="damaged gzip"):
        FashionMNIST(tmp_path, train=False)
    with pytest.raises(MissingFileError, match="train-images-idx3-ubyte"):
        FashionMNIST(tmp_path / "empty", train=True)


def test_fashion_mnist_real_files_match_torchvision(tmp_path):
    """The installed Debian files, read by us and by torchvision's own IDX reader."""
    import torchvision

    source = Path("/usr/share/datasets/fashion-mnist")
    if not (source / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(
            "Fashion-MNIST is not installed: run scripts/setup.sh or "
            "`apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist)"
        )
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in source.glob("*-ubyte.gz"):
        (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    for train, count in ((True, 60000), (False, 10000)):
        ours = FashionMNIST(train=train)
        reference = torchvision.datasets.FashionMNIST(str(tmp_path), train=train, download=False)
        assert len(ours) == count
        assert torch.equal(ours.images, reference.data)
        assert torch.equal(ours.labels, reference.targets)
        assert ours.classes == reference.classes
        assert torch.bincount(ours.labels).tolist() == [count // 10] * 10


# --------------------------------------------------------------------------- Omniglot


def _omniglot_fixture(tmp_path: Path) -> tuple[dict, dict]:
    first = write_omniglot_zip(
        tmp_path / "images_background_small1.zip",
        "images_background_small1",
        {"Balinese": 2, "Greek": 2},
    )
    second = write_omniglot_zip(
        tmp_path / "images_background_small2.zip",
        "images_background_small2",
        {"Greek": 2, "Tagalog": 1},
    )
    return first, second


def test_omniglot_reads_both_zips_once_each_image(tmp_path):
    first, second = _omniglot_fixture(tmp_path)
    glyphs = {**first, **second}
    dataset = Omniglot(tmp_path, image_size=None)
    assert len(dataset) == len(glyphs) == 5 * 4
    assert dataset.alphabets == ["Balinese", "Greek", "Tagalog"]
    assert dataset.classes == sorted({"/".join(name.split("/")[:2]) for name in glyphs})
    assert sorted(set(dataset.extras["drawer"].tolist())) == [1, 2, 3, 4]
    by_key = {}
    for i in range(len(dataset)):
        key = (dataset.classes[int(dataset.labels[i])], int(dataset.extras["drawer"][i]))
        by_key[key] = dataset.images[i].numpy()
    for name, glyph in glyphs.items():
        alphabet, character, file_name = name.split("/")
        drawer = int(file_name.split("_")[1][:2])
        assert np.array_equal(by_key[(f"{alphabet}/{character}", drawer)], 255 - glyph)


def test_omniglot_resize_invert_and_alphabet_filter(tmp_path):
    first, _ = _omniglot_fixture(tmp_path)
    small = Omniglot(tmp_path, invert=False, alphabets=["Balinese"])
    assert small.images.shape == (8, 28, 28) and small.alphabets == ["Balinese"]
    name = next(n for n in first if n.startswith("Balinese/character01/") and n.endswith("_01.png"))
    expected = np.asarray(Image.fromarray(first[name]).resize((28, 28), Image.Resampling.BILINEAR))
    row = int(np.flatnonzero((small.extras["drawer"] == 1) & (small.labels.numpy() == 0))[0])
    assert np.array_equal(small.images[row].numpy(), expected)
    image, label = small[row]
    assert image.size == (28, 28) and small.classes[label] == "Balinese/character01"


def test_omniglot_unpacked_folders(tmp_path):
    (tmp_path / "zips").mkdir()
    _omniglot_fixture(tmp_path / "zips")
    root = tmp_path / "omniglot-py"
    for zip_path in (tmp_path / "zips").glob("*.zip"):
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(root)
    from_folders = Omniglot(tmp_path, image_size=None)
    from_zips = Omniglot(tmp_path / "zips", image_size=None)
    assert from_folders.classes == from_zips.classes
    assert torch.equal(from_folders.images, from_zips.images)


def test_omniglot_errors(tmp_path, monkeypatch):
    with pytest.raises(MissingFileError, match="images_background_small1.zip"):
        Omniglot(tmp_path)
    (tmp_path / "images_background_small1.zip").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "images_background_small2.zip").write_bytes(b"")
    with pytest.raises(SladeIOError, match="not a readable zip") as err:
        Omniglot(tmp_path)
    assert "images_background_small1.zip" in str(err.value)
    with zipfile.ZipFile(tmp_path / "images_background_small1.zip", "w") as archive:
        archive.writestr("images_background_small1/Greek/character01/0001_01.png", b"not a png")
    with pytest.raises(SladeIOError, match="cannot decode") as err:
        Omniglot(tmp_path, archives=["images_background_small1"])
    assert "Greek/character01/0001_01.png" in str(err.value)
    monkeypatch.delenv("SLADE_DATA", raising=False)
    with pytest.raises(MissingFileError, match="SLADE_DATA"):
        Omniglot()


# --------------------------------------------------------------------------- folders, subsets


def test_image_folder_and_unlabeled_images(tmp_path):
    fixture = write_folders(tmp_path)
    labeled = ImageFolderDataset(tmp_path / "labeled")
    assert labeled.classes == ["cat", "dog", "emu"] and torch.bincount(labeled.labels).tolist() == [
        3,
        2,
        2,
    ]
    assert all(
        p.parent.name == labeled.classes[int(y)] for p, y in zip(labeled.paths, labeled.labels)
    )
    pool = unlabeled_images(tmp_path / "unlabeled")
    assert sorted(p.relative_to(tmp_path / "unlabeled").as_posix() for p in pool.paths) == sorted(
        fixture["unlabeled"]
    )
    assert pool.labels.tolist() == [UNLABELED] * 4
    gray = ImageFolderDataset(tmp_path / "test", mode="L")
    assert gray[0][0].mode == "L"
    (tmp_path / "labeled" / "empty").mkdir()
    with pytest.raises(MissingFileError, match="empty"):
        ImageFolderDataset(tmp_path / "labeled")


def test_subset_relabels_and_unlabeled_hides_labels(tmp_path):
    write_cub(tmp_path)
    dataset = CUB200(tmp_path, "all")
    sub = dataset.subset(dataset.labels >= 2)
    assert sub.classes == dataset.classes[2:] and sorted(set(sub.labels.tolist())) == [0, 1]
    kept = dataset.subset([7, 1], relabel=False)
    assert (
        kept.labels.tolist() == [int(dataset.labels[7]), int(dataset.labels[1])]
        and kept.classes == dataset.classes
    )
    hidden = UnlabeledDataset(dataset, labels_known=True)
    assert hidden[4][1] == UNLABELED and torch.equal(hidden.hidden_labels, dataset.labels)
    relabeled = hidden.with_labels(torch.arange(len(dataset)) % 3)
    assert relabeled[4][1] == 1 and relabeled.classes == ["cluster_0", "cluster_1", "cluster_2"]
    assert UnlabeledDataset(dataset, labels_known=False).hidden_labels is None
    with pytest.raises(slade.ShapeError):
        hidden.with_labels([0, 1])
    with pytest.raises(slade.InvalidArgumentError):
        dataset.subset([len(dataset)])
