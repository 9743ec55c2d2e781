"""Loaders for the metric-learning data sets in their official on-disk layouts.

Loaders never download: each takes the folder the data set was unpacked into and fails with
:class:`~slade.errors.MissingFileError` naming the file it expected. Natural-image sets
(CUB-200-2011, Cars-196, In-shop, NABirds, CompCars, Fashion200k) read their annotation files
at construction and decode images on access; Fashion-MNIST and Omniglot are small enough to
hold in memory as uint8 tensors.

Class-disjoint retrieval splits follow the usual deep-metric-learning protocol: CUB-200-2011
first 100 classes train / last 100 test, Cars-196 98 / 98, In-shop train / query / gallery by
``list_eval_partition.txt``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, MissingFileError, SladeIOError
from ._files import (
    IMAGE_EXTENSIONS,
    PathLike,
    decode_image_bytes,
    file_signature,
    find_root,
    image_files_under,
    load_mat,
    mat_field,
    mat_strings,
    parse_error,
    parse_int,
    read_id_table,
    read_idx,
    read_lines,
    record_field,
    require_dir,
    zip_members,
)
from .base import UNLABELED, ImageFileDataset, ImageTensorDataset, Transform

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CUB200",
    "Cars196",
    "InShop",
    "NABirds",
    "CompCars",
    "Fashion200k",
    "FashionMNIST",
    "Omniglot",
    "ImageFolderDataset",
    "unlabeled_images",
]


def _check_split(split: str, allowed: Sequence[str], dataset: str) -> str:
    if split not in allowed:
        raise ConfigError(f"{dataset}: unknown split {split!r}; expected one of {list(allowed)}")
    return split


def _contiguous(keys: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Maps each key to its rank among the sorted distinct keys."""
    distinct = sorted(set(keys))
    rank = {key: i for i, key in enumerate(distinct)}
    return np.array([rank[k] for k in keys], dtype=np.int64), distinct


def _half_split(labels: np.ndarray, num_classes: int, split: str) -> np.ndarray:
    """Rows of the first half of the classes ("train"), the second half ("test") or all."""
    if split == "all":
        return np.arange(len(labels))
    first = labels < num_classes // 2
    return np.flatnonzero(first if split == "train" else ~first)


class CUB200(ImageFileDataset):
    """CUB-200-2011 (Wah et al. 2011), 11,788 images of 200 bird species.

    Layout (the official ``CUB_200_2011.tgz``)::

        CUB_200_2011/images.txt              <image_id> <class_folder>/<file>.jpg
        CUB_200_2011/image_class_labels.txt  <image_id> <class_id>   (1..200)
        CUB_200_2011/classes.txt             <class_id> <class_name>
        CUB_200_2011/images/<class_folder>/<file>.jpg

    Args:
        root: the ``CUB_200_2011`` folder or the folder holding it.
        split: ``"train"`` (classes 1-100), ``"test"`` (classes 101-200) or ``"all"``;
            class-disjoint, as in metric-learning papers (not the official per-image split).
        transform: applied to the RGB PIL image.
    """

    def __init__(
        self, root: PathLike, split: str = "train", transform: Transform | None = None
    ) -> None:
        self.split = _check_split(split, ("train", "test", "all"), "CUB200")
        base = find_root(root, "images.txt", ("CUB_200_2011",), "CUB-200-2011")
        self.root = base
        image_dir, entries, class_table = _read_image_class_lists(base, "CUB-200-2011")
        class_ids = sorted(class_table, key=lambda key: _int_key(base / "classes.txt", key))
        class_rank = {key: i for i, key in enumerate(class_ids)}
        labels = np.array([class_rank[class_id] for _, _, class_id in entries], dtype=np.int64)
        full = ImageFileDataset(
            [image_dir / relative for _, relative, _ in entries],
            labels,
            [class_table[k] for k in class_ids],
            transform,
            listed_in=base / "images.txt",
        )
        rows = _half_split(labels, len(class_ids), self.split)
        _adopt(self, full.subset(rows) if self.split != "all" else full)


def _read_image_class_lists(
    base: Path, dataset: str
) -> tuple[Path, list[tuple[str, str, str]], dict[str, str]]:
    """Reads the CUB-style lists NABirds shares: images.txt, image_class_labels.txt, classes.txt.

    Returns the image folder, ``(image_id, relative path, class_id)`` in images.txt order
    (every image labeled, every label a known class) and the class id -> name table.
    """
    images = read_id_table(base / "images.txt", f"{dataset} image list", "'<image_id> <path>'")
    labels_file = base / "image_class_labels.txt"
    image_labels = read_id_table(labels_file, f"{dataset} labels", "'<image_id> <class_id>'")
    class_table = read_id_table(
        base / "classes.txt", f"{dataset} class names", "'<class_id> <name>'"
    )
    image_dir = require_dir(base / "images", f"{dataset} image folder")
    entries = []
    for image_id, relative in images.items():
        if image_id not in image_labels:
            raise SladeIOError(f"{labels_file} has no label for image id {image_id} of images.txt")
        class_id = image_labels[image_id]
        if class_id not in class_table:
            raise SladeIOError(
                f"{labels_file}: class id {class_id} (image {image_id}) is not in classes.txt"
            )
        entries.append((image_id, relative, class_id))
    return image_dir, entries, class_table


def _int_key(path: Path, key: str) -> int:
    try:
        return int(key)
    except ValueError:
        raise SladeIOError(f"{path}: expected integer ids, got {key!r}") from None


def _adopt(target: ImageFileDataset, source: ImageFileDataset) -> None:
    """Initialises ``target`` (a loader subclass) from a built dataset."""
    ImageFileDataset.__init__(
        target,
        source.paths,
        source.labels,
        source.classes,
        source.transform,
        source.mode,
        source.extras,
        source.listed_in,
    )


class Cars196(ImageFileDataset):
    """Cars-196 (Stanford Cars, Krause et al. 2013), 16,185 images of 196 car models.

    Reads either release:

    * ``cars_annos.mat`` + ``car_ims/`` (all images): the struct array ``annotations`` with
      fields ``relative_im_path`` (``car_ims/000001.jpg``) and ``class`` (1..196), and the
      cell array ``class_names``;
    * the devkit layout torchvision's ``StanfordCars`` uses: ``devkit/cars_meta.mat``
      (``class_names``), ``devkit/cars_train_annos.mat`` with images in ``cars_train/``, and
      ``cars_test_annos_withlabels.mat`` with images in ``cars_test/`` (fields ``fname``,
      ``class``).

    Args:
        root: the folder holding those files (or its ``stanford_cars`` subfolder).
        split: ``"train"`` (classes 1-98), ``"test"`` (classes 99-196) or ``"all"``.
    """

    def __init__(
        self, root: PathLike, split: str = "train", transform: Transform | None = None
    ) -> None:
        self.split = _check_split(split, ("train", "test", "all"), "Cars196")
        base = Path(root).expanduser()
        if (base / "stanford_cars").is_dir() and not (base / "cars_annos.mat").exists():
            base = base / "stanford_cars"
        self.root = base
        if (base / "cars_annos.mat").exists():
            paths, classes_1based, names, listed = self._read_annos(base)
        elif (base / "devkit" / "cars_meta.mat").exists():
            paths, classes_1based, names, listed = self._read_devkit(base)
        else:
            raise MissingFileError(
                f"Cars-196 annotations not found under {base}: "
                "expected cars_annos.mat (with car_ims/) "
                f"or devkit/cars_meta.mat (the devkit release)"
            )
        labels = np.asarray(classes_1based, dtype=np.int64) - 1
        if labels.min() < 0 or labels.max() >= len(names):
            raise SladeIOError(
                f"{listed}: class numbers must lie in 1..{len(names)}, "
                f"got {labels.min() + 1}..{labels.max() + 1}"
            )
        full = ImageFileDataset(paths, labels, names, transform, listed_in=listed)
        rows = _half_split(labels, len(names), self.split)
        _adopt(self, full.subset(rows) if self.split != "all" else full)

    @staticmethod
    def _read_annos(base: Path) -> tuple[list[Path], np.ndarray, list[str], Path]:
        path = base / "cars_annos.mat"
        mat = load_mat(path, "Cars-196 annotations")
        records = mat_field(path, mat, "annotations")
        relative = [str(p) for p in np.atleast_1d(record_field(path, records, "relative_im_path"))]
        classes = np.atleast_1d(record_field(path, records, "class")).astype(np.int64)
        names = mat_strings(path, mat_field(path, mat, "class_names"), "class_names")
        require_dir(base / "car_ims", "Cars-196 image folder (car_ims.tgz unpacked)")
        return [base / r for r in relative], classes, names, path

    @staticmethod
    def _read_devkit(base: Path) -> tuple[list[Path], np.ndarray, list[str], Path]:
        meta = base / "devkit" / "cars_meta.mat"
        names = mat_strings(
            meta,
            mat_field(meta, load_mat(meta, "Cars-196 class names"), "class_names"),
            "class_names",
        )
        paths: list[Path] = []
        classes: list[np.ndarray] = []
        parts = (
            (base / "devkit" / "cars_train_annos.mat", base / "cars_train"),
            (base / "cars_test_annos_withlabels.mat", base / "cars_test"),
        )
        for annos, folder in parts:
            records = mat_field(annos, load_mat(annos, "Cars-196 annotations"), "annotations")
            files = [str(f) for f in np.atleast_1d(record_field(annos, records, "fname"))]
            classes.append(np.atleast_1d(record_field(annos, records, "class")).astype(np.int64))
            require_dir(folder, "Cars-196 image folder")
            paths.extend(folder / f for f in files)
        return paths, np.concatenate(classes), names, meta


class InShop(ImageFileDataset):
    """DeepFashion In-shop Clothes Retrieval (Liu et al. 2016), 52,712 images of 7,982 items.

    Layout::

        Eval/list_eval_partition.txt   line 1: number of images; line 2: header
                                       "image_name item_id evaluation_status"; then one
                                       "img/<...>.jpg id_XXXXXXXX train|query|gallery" per image
        img/<gender>/<category>/<item>/<file>.jpg   (also accepted under Img/img/)

    Args:
        split: ``"train"`` (3,997 items), ``"query"`` or ``"gallery"`` (the other 3,985 items).
            Query and gallery share one label numbering (labels index the items of both).
    """

    def __init__(
        self, root: PathLike, split: str = "train", transform: Transform | None = None
    ) -> None:
        self.split = _check_split(split, ("train", "query", "gallery"), "InShop")
        base = find_root(root, "Eval/list_eval_partition.txt", ("In-shop", "inshop"), "In-shop")
        self.root = base
        listing = base / "Eval" / "list_eval_partition.txt"
        lines = read_lines(listing, "In-shop evaluation partition")
        if len(lines) < 2:
            raise SladeIOError(
                f"{listing}: expected an image count, a header line and one line per image"
            )
        count_line, count_text = lines[0]
        declared = parse_int(listing, count_line, "the number of images", count_text, count_text)
        header_line, header = lines[1]
        if header.split() != ["image_name", "item_id", "evaluation_status"]:
            raise parse_error(
                listing, header_line, "'image_name item_id evaluation_status'", header
            )
        rows = []
        for number, line in lines[2:]:
            fields = line.split()
            if len(fields) != 3 or fields[2] not in ("train", "query", "gallery"):
                raise parse_error(
                    listing, number, "'<image_name> <item_id> train|query|gallery'", line
                )
            rows.append(fields)
        if len(rows) != declared:
            raise SladeIOError(
                f"{listing}: line 1 announces {declared} images but {len(rows)} are listed"
            )
        image_base = base if (base / "img").is_dir() else base / "Img"
        require_dir(image_base / "img", "In-shop image folder (img/ from img.zip)")
        wanted = ("train",) if self.split == "train" else ("query", "gallery")
        items = sorted({item for _, item, status in rows if status in wanted})
        rank = {item: i for i, item in enumerate(items)}
        chosen = [(name, item) for name, item, status in rows if status == self.split]
        full = ImageFileDataset(
            [image_base / name for name, _ in chosen],
            [rank[item] for _, item in chosen],
            items,
            transform,
            listed_in=listing,
        )
        _adopt(self, full)


class NABirds(ImageFileDataset):
    """NABirds (Van Horn et al. 2015), 48,562 images of 555 North American bird categories.

    Layout::

        images.txt              <uuid> <folder>/<file>.jpg   (relative to images/)
        image_class_labels.txt  <uuid> <class_id>            (ids of leaf classes)
        classes.txt             <class_id> <name>            (all nodes of the hierarchy)
        train_test_split.txt    <uuid> 1|0                   (only for split="train"/"test")
        images/<folder>/<file>.jpg

    Labels number the classes that label at least one image of the split, in id order.

    Args:
        root: the ``nabirds`` folder or the folder holding it.
        split: ``"all"`` (default), or the official per-image ``"train"`` / ``"test"`` split.
    """

    def __init__(
        self, root: PathLike, split: str = "all", transform: Transform | None = None
    ) -> None:
        self.split = _check_split(split, ("all", "train", "test"), "NABirds")
        base = find_root(root, "image_class_labels.txt", ("nabirds",), "NABirds")
        self.root = base
        image_dir, entries, class_table = _read_image_class_lists(base, "NABirds")
        if self.split != "all":
            split_file = base / "train_test_split.txt"
            flags = read_id_table(split_file, "NABirds train/test split", "'<image_id> 1|0'")
            wanted = "1" if self.split == "train" else "0"
            entries = [entry for entry in entries if flags.get(entry[0]) == wanted]
        labels_file = base / "image_class_labels.txt"
        keys = [(_int_key(labels_file, class_id), class_id) for _, _, class_id in entries]
        labels, distinct = _contiguous(keys)
        full = ImageFileDataset(
            [image_dir / relative for _, relative, _ in entries],
            labels,
            [class_table[class_id] for _, class_id in distinct],
            transform,
            listed_in=base / "images.txt",
        )
        _adopt(self, full)


class CompCars(ImageFileDataset):
    """CompCars, web-nature part (Yang et al. 2015), images of car models by make and year.

    Layout::

        data/image/<make_id>/<model_id>/<year>/<file>.jpg
        data/train_test_split/classification/train.txt, test.txt   one image path per line,
                                                                    relative to data/image/
        data/misc/make_model_name.mat   (optional) cell arrays make_names, model_names

    Args:
        root: the folder holding ``data/`` (or ``data/`` itself).
        split: ``"train"`` / ``"test"`` (the classification lists: 431 models),
            ``"classification"`` (both lists) or ``"all"`` (every image under ``data/image``).
        label_level: ``"model"`` (default) or ``"make"``.
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        label_level: str = "model",
        transform: Transform | None = None,
    ) -> None:
        self.split = _check_split(split, ("train", "test", "classification", "all"), "CompCars")
        if label_level not in ("model", "make"):
            raise ConfigError(
                f"CompCars: unknown label_level {label_level!r}; expected 'model' or 'make'"
            )
        self.label_level = label_level
        base = find_root(root, "image", ("data",), "CompCars")
        self.root = base
        image_dir = require_dir(base / "image", "CompCars image folder")
        if self.split == "all":
            listed = None
            relative = [p.relative_to(image_dir).as_posix() for p in image_files_under(image_dir)]
            if not relative:
                raise MissingFileError(f"CompCars: no images under {image_dir}")
        else:
            lists = ("train", "test") if self.split == "classification" else (self.split,)
            relative = []
            for name in lists:
                listed = base / "train_test_split" / "classification" / f"{name}.txt"
                for number, line in read_lines(listed, f"CompCars {name} list"):
                    if len(line.split("/")) != 4:
                        raise parse_error(
                            listed, number, "'<make_id>/<model_id>/<year>/<file>.jpg'", line
                        )
                    relative.append(line)
        keys = []
        for path in relative:
            make, model = path.split("/")[:2]
            if not (make.isdigit() and model.isdigit()):
                source = listed if listed is not None else image_dir
                raise SladeIOError(
                    f"{source}: expected <make_id>/<model_id>/... with numeric ids, got {path!r}"
                )
            keys.append(int(make) if label_level == "make" else int(model))
        labels, distinct = _contiguous(keys)
        names = self._names(base, label_level)
        classes = [names.get(k, f"{label_level}_{k}") for k in distinct]
        extras = {"make_id": np.array([int(p.split("/")[0]) for p in relative], dtype=np.int64)}
        full = ImageFileDataset(
            [image_dir / p for p in relative],
            labels,
            classes,
            transform,
            extras=extras,
            listed_in=listed,
        )
        _adopt(self, full)

    @staticmethod
    def _names(base: Path, level: str) -> dict[int, str]:
        path = base / "misc" / "make_model_name.mat"
        if not path.exists():
            return {}
        mat = load_mat(path, "CompCars make and model names")
        names = mat_strings(path, mat_field(path, mat, f"{level}_names"), f"{level}_names")
        return {i: name for i, name in enumerate(names, start=1) if name}


class Fashion200k(ImageFileDataset):
    """Fashion200k (Han et al. 2017), about 200k product images in five categories.

    Layout::

        labels/<category>_<split>_detect_all.txt   tab-separated: <image path> <detection score>
                                                   <description>, category in dress, jacket,
                                                   pants, skirt, top; split train or test
        women/<category>/<subcategory>/<product_id>/<product_id>_<n>.jpeg

    Labels number the products (the folder holding each image); ``extras["category"]``
    and ``descriptions`` keep the rest of each line.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        categories: restrict to some of the five categories.
    """

    CATEGORIES = ("dress", "jacket", "pants", "skirt", "top")

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        categories: Sequence[str] | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.split = _check_split(split, ("train", "test", "all"), "Fashion200k")
        base = find_root(root, "labels", ("fashion200k", "Fashion200k"), "Fashion200k")
        self.root = base
        chosen = tuple(categories) if categories is not None else self.CATEGORIES
        unknown = sorted(set(chosen) - set(self.CATEGORIES))
        if unknown:
            raise ConfigError(
                f"Fashion200k: unknown categories {unknown}; "
                f"expected some of {list(self.CATEGORIES)}"
            )
        splits = ("train", "test") if self.split == "all" else (self.split,)
        pattern = re.compile(r"^(?P<category>[a-z]+)_(?P<split>train|test)_detect_all\.txt$")
        files = []
        for path in sorted((base / "labels").iterdir()):
            match = pattern.match(path.name)
            if match and match["split"] in splits and match["category"] in chosen:
                files.append((path, match["category"]))
        if not files:
            raise MissingFileError(
                f"Fashion200k label lists not found: expected "
                f"{base / 'labels'}/<category>_{'|'.join(splits)}"
                f"_detect_all.txt for categories {list(chosen)}"
            )
        paths, products, categories_of, descriptions = [], [], [], []
        for path, category in files:
            for number, line in read_lines(path, "Fashion200k label list"):
                fields = line.split("\t")
                image = fields[0].strip()
                parts = image.split("/")
                if len(fields) < 2 or len(parts) < 2:
                    raise parse_error(
                        path, number, "'<image path>\\t<detection score>\\t<description>'", line
                    )
                paths.append(base / image)
                products.append(parts[-2])
                categories_of.append(category)
                descriptions.append(fields[2].strip() if len(fields) > 2 else "")
        labels, distinct = _contiguous(products)
        full = ImageFileDataset(
            paths,
            labels,
            distinct,
            transform,
            extras={"category": np.array(categories_of)},
            listed_in=files[0][0],
        )
        _adopt(self, full)
        self.descriptions = descriptions

    def _take(self, rows: np.ndarray) -> Self:
        clone = super()._take(rows)
        clone.descriptions = [self.descriptions[i] for i in rows]
        return clone


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

_FASHION_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx_file(folders: Sequence[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


@functools.lru_cache(maxsize=4)
def _read_idx_pair(images_sig: tuple, labels_sig: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    images_path, labels_path = Path(images_sig[0]), Path(labels_sig[0])
    images = read_idx(images_path, "Fashion-MNIST images")
    labels = read_idx(labels_path, "Fashion-MNIST labels")
    if images.dtype != np.uint8 or images.ndim != 3:
        raise SladeIOError(
            f"{images_path}: expected unsigned-byte images (N, H, W), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise SladeIOError(
            f"{labels_path}: expected unsigned-byte labels (N,), got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise SladeIOError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels"
        )
    if labels.size and labels.max() >= len(FashionMNIST.CLASSES):
        raise SladeIOError(f"{labels_path}: labels must lie in 0..9, found {int(labels.max())}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class FashionMNIST(ImageTensorDataset):
    """Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test 28x28 grayscale images.

    Reads the four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped or not) from
    ``root``, ``root/FashionMNIST/raw`` (torchvision's layout) or ``root/raw``. The default
    ``root`` is where the Debian package ``dataset-fashion-mnist`` installs them.

    Args:
        train: the 60,000 training images (default) or the 10,000 ``t10k`` test images.
        image_size: side in pixels images are resized to (bilinear, as Omniglot's);
            ``None`` or 28 keeps them as stored.
    """

    CLASSES = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )

    def __init__(
        self,
        root: PathLike | None = None,
        train: bool = True,
        transform: Transform | None = None,
        image_size: int | None = None,
    ) -> None:
        if image_size is not None and image_size < 1:
            raise ConfigError(
                f"FashionMNIST: image_size must be a positive number of pixels, got {image_size}"
            )
        base = Path(root).expanduser() if root is not None else FASHION_MNIST_DEFAULT_ROOT
        self.root = base
        self.split = "train" if train else "test"
        folders = [base, base / "FashionMNIST" / "raw", base / "raw"]
        found = []
        for stem in _FASHION_MNIST_FILES[bool(train)]:
            path = _find_idx_file(folders, stem)
            if path is None:
                hint = (
                    " (install the Debian package dataset-fashion-mnist, "
                    "or pass root= a folder holding the files)"
                    if root is None
                    else ""
                )
                raise MissingFileError(
                    f"Fashion-MNIST file {stem}[.gz] not found in "
                    f"{', '.join(str(f) for f in folders)}{hint}"
                )
            found.append(path)
        images, labels = _read_idx_pair(file_signature(found[0]), file_signature(found[1]))
        if image_size is not None and image_size != images.shape[-1]:
            images = _resized(images, image_size)
        # Copies of the cached decode, so changing one dataset's tensors leaves others intact.
        super().__init__(images.clone(), labels.clone(), self.CLASSES, transform)


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(N, H, W)`` images resized to ``(N, size, size)`` (PIL bilinear)."""
    resized = [
        np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
        for image in images.numpy()
    ]
    return torch.from_numpy(np.stack(resized))


# --------------------------------------------------------------------------- Omniglot

OMNIGLOT_BACKGROUND_SMALL = ("images_background_small1", "images_background_small2")

_DRAWER_PATTERN = re.compile(r"^\d+_(\d+)\.png$")


def _omniglot_sources(base: Path, archives: Sequence[str]) -> list[Path]:
    sources = []
    for stem in archives:
        candidates = [
            folder / name
            for folder in (base, base / "omniglot-py")
            for name in (f"{stem}.zip", stem)
        ]
        source = next((c for c in candidates if c.exists()), None)
        if source is None:
            raise MissingFileError(
                f"Omniglot archive {stem}.zip (or the unpacked folder {stem}/) not found in {base} "
                f"or {base / 'omniglot-py'}"
            )
        sources.append(source)
    return sources


def _omniglot_entries(source: Path) -> list[tuple[str, str, str, Any]]:
    """(alphabet, character, file name, bytes or path) of every PNG of an archive or folder."""
    entries: list[tuple[str, str, str, Any]] = []
    if source.is_dir():
        for path in image_files_under(source):
            relative = path.relative_to(source).parts
            if len(relative) < 3 or path.suffix.lower() != ".png":
                continue
            entries.append((relative[-3], relative[-2], relative[-1], path))
    else:
        for name, data in zip_members(source, "Omniglot archive"):
            parts = name.split("/")
            if len(parts) < 3 or not name.lower().endswith(".png"):
                continue
            entries.append((parts[-3], parts[-2], parts[-1], data))
    if not entries:
        raise SladeIOError(f"{source} holds no <alphabet>/<character>/<file>.png images")
    return entries


@functools.lru_cache(maxsize=4)
def _decode_omniglot(signatures: tuple, image_size: int | None, invert: bool) -> tuple:
    seen: dict[tuple[str, str, str], Any] = {}
    origin: dict[tuple[str, str, str], str] = {}
    for signature in signatures:
        source = Path(signature[0])
        for alphabet, character, file_name, content in _omniglot_entries(source):
            key = (alphabet, character, file_name)
            if key not in seen:  # Greek and Latin are in both background_small archives
                seen[key] = content
                origin[key] = f"{source}:{alphabet}/{character}/{file_name}"
    keys = sorted(seen)
    arrays = []
    drawers = []
    for key in keys:
        content, name = seen[key], origin[key]
        match = _DRAWER_PATTERN.match(key[2])
        if match is None:
            raise SladeIOError(f"{name}: expected an Omniglot file name <image id>_<drawer>.png")
        drawers.append(int(match.group(1)))
        if isinstance(content, Path):
            image = decode_image_bytes(content.read_bytes(), "L", name)
        else:
            image = decode_image_bytes(content, "L", name)
        if image_size is not None and image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        arrays.append(255 - array if invert else array)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise SladeIOError(
            f"Omniglot images differ in size ({sorted(shapes)}); pass image_size to resize them"
        )
    images = torch.from_numpy(np.stack(arrays))
    return images, keys, np.array(drawers, dtype=np.int64)


class Omniglot(ImageTensorDataset):
    """Omniglot (Lake et al. 2015): handwritten characters, 20 drawers each, 105x105 PNG.

    Reads the official archives (``images_background_small1.zip``, ... ) in place, or the
    same folders unpacked (also under ``omniglot-py/``, torchvision's layout). Images that
    appear in several archives (Greek and Latin are in both "small" background archives)
    are read once. Each character of each alphabet is a class, named ``"<alphabet>/<character>"``.

    Args:
        root: folder holding the archives; defaults to ``$SLADE_DATA/omniglot``.
        archives: archive names without ``.zip``; default the two background "small" ones.
        image_size: side in pixels images are resized to (default 28; ``None`` keeps 105).
        invert: store ink as 255 on a 0 background (default, as MNIST), so zero padding
            (random shifts) pads with background.
        alphabets: keep only these alphabets.

    ``extras["alphabet"]`` and ``extras["drawer"]`` (1..20) give each image's alphabet and
    drawer number (from the ``<id>_<drawer>.png`` file name).
    """

    def __init__(
        self,
        root: PathLike | None = None,
        archives: Sequence[str] = OMNIGLOT_BACKGROUND_SMALL,
        image_size: int | None = 28,
        invert: bool = True,
        alphabets: Sequence[str] | None = None,
        transform: Transform | None = None,
    ) -> None:
        if root is None:
            data_root = os.environ.get("SLADE_DATA")
            if not data_root:
                raise MissingFileError(
                    "Omniglot: pass root= the folder holding images_background_small1.zip and "
                    "images_background_small2.zip, or set SLADE_DATA to a folder holding omniglot/"
                )
            root = Path(data_root) / "omniglot"
        base = Path(root).expanduser()
        self.root = base
        if image_size is not None and image_size < 1:
            raise ConfigError(
                f"Omniglot: image_size must be a positive number of pixels, got {image_size}"
            )
        sources = _omniglot_sources(base, archives)
        signatures = tuple(_source_signature(s) for s in sources)
        images, keys, drawers = _decode_omniglot(signatures, image_size, bool(invert))
        images, drawers = images.clone(), drawers.copy()  # the decode is cached: own copies
        alphabet_of = np.array([k[0] for k in keys])
        class_keys = [f"{k[0]}/{k[1]}" for k in keys]
        labels, classes = _contiguous(class_keys)
        super().__init__(
            images, labels, classes, transform, extras={"alphabet": alphabet_of, "drawer": drawers}
        )
        if alphabets is not None:
            missing = sorted(set(alphabets) - set(alphabet_of.tolist()))
            if missing:
                raise SladeIOError(
                    f"Omniglot: alphabets {missing} are not in {[str(s) for s in sources]}"
                )
            kept = self.subset(np.isin(alphabet_of, list(alphabets)))
            self.images, self.labels, self.classes, self.extras = (
                kept.images,
                kept.labels,
                kept.classes,
                kept.extras,
            )

    @property
    def alphabets(self) -> list[str]:
        return sorted(set(self.extras["alphabet"].tolist()))


def _source_signature(source: Path) -> tuple:
    if source.is_dir():
        return (
            str(source.resolve()),
            -1,
            max((p.stat().st_mtime_ns for p in source.rglob("*")), default=0),
        )
    return file_signature(source)


# --------------------------------------------------------------------------- plain folders


class ImageFolderDataset(ImageFileDataset):
    """``root/<class>/**/<image>``: one folder per class, as torchvision's ImageFolder.

    Classes are the sub-folder names in sorted order; images are found recursively (files
    without an image ending, e.g. ``notes.txt``, are not read). A class folder without
    image files is an error naming it; with ``skip_empty`` it is left out and listed in
    ``empty_folders``.
    """

    def __init__(
        self,
        root: PathLike,
        transform: Transform | None = None,
        mode: str = "RGB",
        skip_empty: bool = False,
    ) -> None:
        base = require_dir(Path(root).expanduser(), "image folder (<class>/<image> layout)")
        self.root = base
        class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        found = [(folder, image_files_under(folder)) for folder in class_dirs]
        self.empty_folders = [folder for folder, files in found if not files]
        if self.empty_folders and not skip_empty:
            raise _empty_class_folder(self.empty_folders[0])
        found = [(folder, files) for folder, files in found if files]
        if not found:
            raise MissingFileError(
                f"{base} holds no class folders with images: expected {base}/<class>/<image>"
            )
        paths = [path for _, files in found for path in files]
        labels = [label for label, (_, files) in enumerate(found) for _ in files]
        classes = [folder.name for folder, _ in found]
        super().__init__(paths, labels, classes, transform, mode=mode)


def _empty_class_folder(folder: Path) -> MissingFileError:
    others = sorted(p.name for p in folder.rglob("*") if p.is_file())[:3]
    holds = f" (it holds {', '.join(others)}, not image files)" if others else ""
    return MissingFileError(
        f"class folder {folder} holds no image files{holds}; expected images ending in "
        f"{', '.join(IMAGE_EXTENSIONS)}: add images, remove the folder, or load the data with "
        "skip_bad_files=True (data.skip_bad_files=true in a config) to leave it out"
    )


def unlabeled_images(
    root: PathLike, transform: Transform | None = None, mode: str = "RGB"
) -> ImageFileDataset:
    """Every image file below ``root`` (recursively), without labels (label ``UNLABELED``)."""
    base = require_dir(Path(root).expanduser(), "unlabeled image folder")
    files = image_files_under(base)
    if not files:
        raise MissingFileError(f"no image files under {base}")
    dataset = ImageFileDataset(
        files, np.full(len(files), UNLABELED, dtype=np.int64), [], transform, mode=mode
    )
    dataset.root = base
    return dataset
