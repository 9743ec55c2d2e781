"""Semi-supervised retrieval protocols: which images are labeled, unlabeled, validation and test.

Each protocol returns a :class:`SemiSupervisedData`. The unlabeled part hides its labels from
training (items are ``(image, UNLABELED)``) and keeps them as ``unlabeled.hidden_labels`` for
reporting NMI / purity of pseudo labels. Test classes never appear among the labeled classes;
a validation split (``val_classes``) is carved from the labeled classes, class-disjoint and
seeded, so hyper-parameters are tuned on it and never on test.

Each protocol has an entry in the registry :data:`PROTOCOLS` (:class:`Protocol`): its loader,
the folders it reads, its image style, the default image size and its default transforms.
:func:`slade.load_data`, config validation and the ``slade`` command read it.

Protocols:

* ``fashion-mnist-ssl``: labeled = training images of classes 0-4; unlabeled = training
  images of classes 5-9; test = t10k images of classes 5-9.
* ``omniglot-ssl`` (background "small" archives): labeled = Balinese, Early_Aramaic, Korean
  (86 characters, all drawers); unlabeled = Japanese_(katakana), Sanskrit, Tagalog (all
  drawers) plus Greek and Latin drawers 1-10; test = Greek and Latin drawers 11-20
  (50 characters, 500 images).
* ``folders``: ``ROOT/labeled/<class>/*``, ``ROOT/unlabeled/**/*``, ``ROOT/test/<class>/*``,
  optional ``ROOT/val/<class>/*``.
* Paper pairings (SLADE, Duan et al. 2021, Sec 4): ``cub-nabirds``, ``cars-compcars``,
  ``inshop-fashion200k``: the metric-learning split of the first data set plus the second
  one as unlabeled pool.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from ..errors import ConfigError, InvalidArgumentError, MissingFileError, SladeIOError
from . import transforms as presets
from ._files import PathLike
from .bad_files import BadFile, SkippedFiles, without_bad_files
from .base import (
    ImageDataset,
    UnlabeledDataset,
    split_classes,
    split_groups,
    split_images_per_class,
)
from .datasets import (
    CUB200,
    FASHION_MNIST_DEFAULT_ROOT,
    Cars196,
    CompCars,
    Fashion200k,
    FashionMNIST,
    ImageFolderDataset,
    InShop,
    NABirds,
    Omniglot,
    unlabeled_images,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "SemiSupervisedData",
    "PRESET",
    "FileOptions",
    "Protocol",
    "Root",
    "PROTOCOLS",
    "protocol",
    "load_protocol",
    "fashion_mnist_ssl",
    "omniglot_ssl",
    "folders",
    "cub_nabirds",
    "cars_compcars",
    "inshop_fashion200k",
    "OMNIGLOT_LABELED_ALPHABETS",
    "OMNIGLOT_UNLABELED_ALPHABETS",
    "OMNIGLOT_SHARED_ALPHABETS",
]

#: Use the protocol's transform preset (see :mod:`slade.data.transforms`).
PRESET = "preset"

TransformArg = Callable[[Any], Any] | str | None


class FileOptions(TypedDict, total=False):
    """The keyword arguments every image-file protocol takes (defaults in brackets).

    Attributes:
        val_classes: labeled classes held out as the validation split, a count or a fraction
            (0: none, or the data set's own validation images).
        seed: seeds that split (0).
        train_transform, eval_transform: a callable, None, or :data:`PRESET` for the
            protocol's preset (:data:`PRESET`).
        skip_bad_files: leave empty class folders and unreadable images out
            (:mod:`slade.data.bad_files`) instead of raising (False).
    """

    val_classes: int | float
    seed: int
    train_transform: TransformArg
    eval_transform: TransformArg
    skip_bad_files: bool


@dataclass
class SemiSupervisedData:
    """The parts of a semi-supervised retrieval protocol.

    Attributes:
        name: protocol name.
        labeled: labeled training images (labels ``0..num_labeled_classes-1``).
        unlabeled: unlabeled training images; true labels only in ``hidden_labels``.
        test: test images (self-retrieval), or the queries when ``gallery`` is set.
        val: validation images from labeled classes held out of ``labeled``, or None.
        gallery: the retrieval gallery of query/gallery protocols (In-shop), else None.
        train_transform / eval_transform: the transforms set on the training parts
            (labeled, unlabeled) and on the evaluation parts (val, test, gallery). Use
            ``unlabeled.with_transform(data.eval_transform)`` to embed the unlabeled images
            for pseudo labelling.
        skipped: the image files and class folders a loader with ``skip_bad_files`` left
            out (:mod:`slade.data.bad_files`); None when it did not check.
    """

    name: str
    labeled: ImageDataset
    unlabeled: UnlabeledDataset
    test: ImageDataset
    val: ImageDataset | None = None
    gallery: ImageDataset | None = None
    train_transform: Callable[[Any], Any] | None = None
    eval_transform: Callable[[Any], Any] | None = None
    skipped: SkippedFiles | None = None

    @property
    def num_labeled_classes(self) -> int:
        """Labeled classes (the default number of basis vectors B of the student, Sec 3.3)."""
        return self.labeled.num_classes

    @property
    def hidden_labels(self) -> Any:
        """True labels of the unlabeled images (None when the data has none); evaluation only."""
        return self.unlabeled.hidden_labels

    def counts(self) -> dict[str, dict[str, int | None]]:
        """Images and classes of each part (the unlabeled classes counted from hidden labels),
        and the files and folders left out (``skipped``) when a loader checked them."""
        out: dict[str, dict[str, int | None]] = {}
        for part in ("labeled", "val", "test", "gallery"):
            dataset = getattr(self, part)
            if dataset is not None:
                out[part] = {
                    "images": len(dataset),
                    "classes": int(dataset.labels.unique().numel()),
                }
        hidden = self.unlabeled.hidden_labels
        out["unlabeled"] = {
            "images": len(self.unlabeled),
            "classes": int(hidden.unique().numel()) if hidden is not None else None,
        }
        if self.skipped is not None:
            out["skipped"] = dict(self.skipped.counts())
        return out


def with_val_in_pool(data: SemiSupervisedData, fraction: float, seed: int = 0) -> SemiSupervisedData:
    """Moves ``fraction`` of each validation class's images into the unlabeled pool.

    In the protocols the test classes also appear in the unlabeled pool (other images of
    them), which is what the student's pseudo labels exploit. A validation split that
    mirrors this puts part of each held-out class into the pool (labels hidden) and keeps
    the other part as validation queries; hyperparameters tuned on it see the same setting
    as the test split.
    """
    if data.val is None:
        raise ConfigError(
            "val_in_pool needs a validation split: set val_classes (or val_groups) > 0"
        )
    queries, pooled = split_images_per_class(data.val, fraction, seed)
    pooled = pooled.with_transform(data.unlabeled.transform)
    return replace(
        data,
        unlabeled=data.unlabeled.with_images(pooled),
        val=queries,
    )


def _resolve(
    transform: TransformArg, preset: Callable[[], Callable[[Any], Any]]
) -> Callable[[Any], Any] | None:
    if isinstance(transform, str):
        if transform != PRESET:
            raise ConfigError(
                f"a transform must be a callable, None or {PRESET!r}, got {transform!r}"
            )
        return preset()
    return transform


def _assemble(
    name: str,
    labeled: ImageDataset,
    unlabeled: UnlabeledDataset,
    test: ImageDataset,
    *,
    style: str,
    train_transform: TransformArg = PRESET,
    eval_transform: TransformArg = PRESET,
    val_classes: int | float = 0,
    seed: int = 0,
    val: ImageDataset | None = None,
    gallery: ImageDataset | None = None,
    val_groups: int = 0,
    group_key: str | None = None,
    skip_bad_files: bool = False,
    empty_folders: Sequence[BadFile] = (),
) -> SemiSupervisedData:
    if (
        isinstance(val_classes, bool)
        or not isinstance(val_classes, (int, float))
        or val_classes < 0
    ):
        raise InvalidArgumentError(
            f"val_classes must be a number of classes or a fraction >= 0, got {val_classes!r}"
        )
    if val_classes:
        if val is not None:
            raise ConfigError(
                f"{name}: the data already has a validation set; leave val_classes at 0"
            )
        labeled, val = split_classes(labeled, val_classes, seed)
    if val_groups:
        if group_key is None:
            raise InvalidArgumentError(f"{name}: val_groups needs class groups, and it has none")
        if val_classes or val is not None:
            raise ConfigError(
                f"{name}: val_groups holds out whole class groups; leave val_classes at 0"
            )
        labeled, val = split_groups(labeled, labeled.extras[group_key], val_groups, seed)
    train_t = _resolve(train_transform, lambda: presets.train_transform(style))
    eval_t = _resolve(eval_transform, lambda: presets.eval_transform(style))
    data = SemiSupervisedData(
        name=name,
        labeled=labeled.with_transform(train_t),
        unlabeled=unlabeled.with_transform(train_t),
        test=test.with_transform(eval_t),
        val=val.with_transform(eval_t) if val is not None else None,
        gallery=gallery.with_transform(eval_t) if gallery is not None else None,
        train_transform=train_t,
        eval_transform=eval_t,
    )
    return without_bad_files(data, empty_folders) if skip_bad_files else data


def fashion_mnist_ssl(
    root: PathLike | None = None,
    *,
    image_size: int | None = None,
    val_classes: int | float = 0,
    seed: int = 0,
    train_transform: TransformArg = PRESET,
    eval_transform: TransformArg = PRESET,
) -> SemiSupervisedData:
    """Protocol ``fashion-mnist-ssl``: 30,000 labeled / 30,000 unlabeled / 5,000 test images.

    labeled = training images of classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat);
    unlabeled = training images of classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot),
    labels hidden; test = t10k images of classes 5-9. ``root`` and ``image_size`` (None:
    the stored 28x28) as :class:`FashionMNIST`. Test labels and hidden labels both number
    classes 5-9 as 0-4 (names in ``classes``).
    """
    train = FashionMNIST(root, train=True, image_size=image_size)
    test = FashionMNIST(root, train=False, image_size=image_size)
    seen = train.labels < 5
    return _assemble(
        "fashion-mnist-ssl",
        train.subset(seen),
        UnlabeledDataset(train.subset(~seen)),
        test.subset(test.labels >= 5),
        style="grayscale",
        train_transform=train_transform,
        eval_transform=eval_transform,
        val_classes=val_classes,
        seed=seed,
    )


OMNIGLOT_LABELED_ALPHABETS = ("Balinese", "Early_Aramaic", "Korean")
OMNIGLOT_UNLABELED_ALPHABETS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")
OMNIGLOT_SHARED_ALPHABETS = ("Greek", "Latin")


def omniglot_ssl(
    root: PathLike | None = None,
    *,
    image_size: int | None = 28,
    val_classes: int | float = 0,
    val_groups: int = 0,
    seed: int = 0,
    train_transform: TransformArg = PRESET,
    eval_transform: TransformArg = PRESET,
) -> SemiSupervisedData:
    """Protocol ``omniglot-ssl`` on the two background "small" archives.

    labeled = Balinese, Early_Aramaic, Korean (86 characters x 20 drawers = 1,720 images);
    unlabeled = Japanese_(katakana), Sanskrit, Tagalog (all drawers) plus Greek and Latin
    drawers 1-10 (2,620 images of 156 characters, labels hidden); test = Greek and Latin
    drawers 11-20 (50 characters, 500 images). The test characters are also in the
    unlabeled pool (other drawers), never among the labeled ones. Images are 28x28 by
    default (``image_size=None`` keeps 105x105). ``root`` as :class:`Omniglot`.
    ``val_groups`` holds out that many whole labeled alphabets (seeded) as validation
    classes, so that validation, like test, asks for alphabets never seen with labels.
    """
    data = Omniglot(root, image_size=image_size)
    expected = OMNIGLOT_LABELED_ALPHABETS + OMNIGLOT_UNLABELED_ALPHABETS + OMNIGLOT_SHARED_ALPHABETS
    missing = sorted(set(expected) - set(data.alphabets))
    if missing:
        raise SladeIOError(
            f"omniglot-ssl: the archives under {data.root} lack the alphabets {missing}"
        )
    alphabet, drawer = data.extras["alphabet"], data.extras["drawer"]
    shared = np.isin(alphabet, OMNIGLOT_SHARED_ALPHABETS)
    unlabeled = np.isin(alphabet, OMNIGLOT_UNLABELED_ALPHABETS) | (shared & (drawer <= 10))
    return _assemble(
        "omniglot-ssl",
        data.subset(np.isin(alphabet, OMNIGLOT_LABELED_ALPHABETS)),
        UnlabeledDataset(data.subset(unlabeled)),
        data.subset(shared & (drawer >= 11)),
        style="grayscale",
        train_transform=train_transform,
        eval_transform=eval_transform,
        val_classes=val_classes,
        seed=seed,
        val_groups=val_groups,
        group_key="alphabet",
    )


def folders(
    root: PathLike,
    *,
    style: str = "natural",
    **options: Unpack[FileOptions],
) -> SemiSupervisedData:
    """Protocol ``folders``: your own images (``options``: :class:`FileOptions`) in the
    layout::

        ROOT/labeled/<class>/<image>     labeled training images
        ROOT/unlabeled/**/<image>        any images, any sub-folders, no labels
        ROOT/test/<class>/<image>        test images (classes should differ from labeled ones)
        ROOT/val/<class>/<image>         optional validation images

    ``style`` picks the transform presets and the colour mode: ``"natural"`` (RGB) or
    ``"grayscale"`` (L). Without ``val/``, ``val_classes`` carves validation classes out of
    the labeled ones. An empty class folder is an error, and an unreadable image one when
    it is read; ``skip_bad_files`` leaves both out (:mod:`slade.data.bad_files`).
    """
    base = Path(root).expanduser()
    layout = (
        "ROOT/labeled/<class>/*, ROOT/unlabeled/**/*, ROOT/test/<class>/* "
        "and optional ROOT/val/<class>/*"
    )
    for part in ("labeled", "unlabeled", "test"):
        if not (base / part).is_dir():
            raise MissingFileError(
                f"folders layout: {base / part} not found; expected {layout} (ROOT = {base})"
            )
    mode = "L" if presets.check_style(style) == "grayscale" else "RGB"
    parts = {
        part: ImageFolderDataset(
            base / part, mode=mode, skip_empty=options.get("skip_bad_files", False)
        )
        for part in ("labeled", "test", "val")
        if (base / part).is_dir()
    }
    empty = [
        BadFile(str(folder), "holds no image files")
        for part in parts.values()
        for folder in part.empty_folders
    ]
    return _assemble(
        "folders",
        parts["labeled"],
        UnlabeledDataset(unlabeled_images(base / "unlabeled", mode=mode), labels_known=False),
        parts["test"],
        style=style,
        val=parts.get("val"),
        empty_folders=empty,
        **options,
    )


def _species_key(name: str) -> str:
    """A bird name reduced for matching across data sets: CUB's "013.Bobolink" and NABirds'
    "Bobolink (Breeding male)" both give "bobolink"."""
    name = re.sub(r"^\d+\.", "", name)
    name = re.sub(r"\(.*?\)", "", name)
    return re.sub(r"[^a-z]", "", name.lower())


def cub_nabirds(
    cub_root: PathLike,
    nabirds_root: PathLike,
    *,
    nabirds_split: str = "all",
    exclude_cub_species: str | None = None,
    **options: Unpack[FileOptions],
) -> SemiSupervisedData:
    """Paper pairing ``cub-nabirds``: CUB-200-2011 classes 1-100 labeled, NABirds unlabeled,
    CUB classes 101-200 test (``options``: :class:`FileOptions`).

    NABirds shares many species with CUB. ``exclude_cub_species`` removes NABirds images
    whose class name matches (ignoring case, punctuation and parenthesised plumage notes)
    a CUB test species (``"test"``) or any CUB species (``"all"``); by default (``None``)
    the whole pool is kept.
    """
    labeled = CUB200(cub_root, "train")
    test = CUB200(cub_root, "test")
    pool = NABirds(nabirds_root, nabirds_split)
    if exclude_cub_species not in (None, "test", "all"):
        raise ConfigError(
            f"exclude_cub_species must be None, 'test' or 'all', got {exclude_cub_species!r}"
        )
    if exclude_cub_species is not None:
        excluded = {_species_key(n) for n in test.classes}
        if exclude_cub_species == "all":
            excluded |= {_species_key(n) for n in labeled.classes}
        drop = np.array(
            [_species_key(pool.classes[int(y)]) in excluded for y in pool.labels], dtype=bool
        )
        pool = pool.subset(~drop)
    return _assemble(
        "cub-nabirds",
        labeled,
        UnlabeledDataset(pool),
        test,
        style="natural",
        **options,
    )


def cars_compcars(
    cars_root: PathLike,
    compcars_root: PathLike,
    *,
    compcars_split: str = "all",
    **options: Unpack[FileOptions],
) -> SemiSupervisedData:
    """Paper pairing ``cars-compcars``: Cars-196 classes 1-98 labeled, CompCars (web-nature
    images, ``compcars_split`` as :class:`CompCars`, hidden labels = car models) unlabeled,
    Cars-196 classes 99-196 test (``options``: :class:`FileOptions`)."""
    return _assemble(
        "cars-compcars",
        Cars196(cars_root, "train"),
        UnlabeledDataset(CompCars(compcars_root, compcars_split)),
        Cars196(cars_root, "test"),
        style="natural",
        **options,
    )


def inshop_fashion200k(
    inshop_root: PathLike,
    fashion200k_root: PathLike,
    *,
    fashion200k_split: str = "train",
    **options: Unpack[FileOptions],
) -> SemiSupervisedData:
    """Paper pairing ``inshop-fashion200k``: In-shop train items labeled, Fashion200k
    unlabeled (hidden labels = products), In-shop query (``test``) against gallery
    (``options``: :class:`FileOptions`)."""
    return _assemble(
        "inshop-fashion200k",
        InShop(inshop_root, "train"),
        UnlabeledDataset(Fashion200k(fashion200k_root, fashion200k_split)),
        InShop(inshop_root, "query"),
        style="natural",
        gallery=InShop(inshop_root, "gallery"),
        **options,
    )


@dataclass(frozen=True)
class Root:
    """A folder a protocol reads.

    Attributes:
        field: the :class:`slade.config.DataConfig` field naming it (``root``, ``pool_root``).
        flag: the ``slade`` command's option for it (``--data``, ``--pool``).
        description: what the folder holds.
        required: False where the loader has a default folder.
    """

    field: str
    flag: str
    description: str
    required: bool = True


@dataclass(frozen=True)
class Protocol:
    """A registry entry: how :func:`slade.load_data` reads one data set.

    Attributes:
        name: the ``data.protocol`` value.
        loader: the protocol function; takes the roots in order, then keyword options.
        roots: the folders it reads.
        style: ``"grayscale"`` or ``"natural"`` (transform presets and colour mode); None
            where the loader's ``style`` option chooses (``folders``).
        description: one line for ``slade presets``.
        image_size: what ``data.image_size = None`` stands for here; None: grayscale images
            keep their stored size, natural images are cropped to 224 px.
        in_memory: the loader decodes the images into memory at its ``image_size`` argument
            (which keeps the fast batch-wise augmentation); other loaders' images are resized
            by the transforms.
        group_key: the ``extras`` column of class groups that ``val_groups`` holds out whole;
            None: the protocol has no class groups.
        own_val: the data can bring validation images of its own (``ROOT/val``).
    """

    name: str
    loader: Callable[..., SemiSupervisedData]
    roots: tuple[Root, ...]
    style: str | None
    description: str
    image_size: int | None = None
    in_memory: bool = False
    group_key: str | None = None
    own_val: bool = False

    def defaults(self, style: str, image_size: int | None, shift: int) -> dict[str, Any]:
        """Loader keywords for a config's ``data.image_size`` and grayscale ``data.shift``:
        the default transforms and, for in-memory images, the decoding size."""
        size = self.image_size if image_size is None else image_size
        transform_size = None if self.in_memory else size
        options: dict[str, Any] = {
            "train_transform": presets.train_transform(style, transform_size, shift),
            "eval_transform": presets.eval_transform(style, transform_size),
        }
        if self.in_memory:
            options["image_size"] = size
        return options


def _pairing(
    name: str,
    loader: Callable[..., SemiSupervisedData],
    labeled: str,
    pool: str,
    description: str,
) -> Protocol:
    """A paper pairing: a metric-learning data set plus an unlabeled pool, natural images."""
    roots = (
        Root("root", "--data", f"the {labeled} folder"),
        Root("pool_root", "--pool", f"the {pool} folder"),
    )
    return Protocol(name, loader, roots, "natural", description)


_FOLDERS_LAYOUT = (
    "ROOT/labeled/<class>/*, ROOT/unlabeled/**/*, ROOT/test/<class>/* (optional ROOT/val/<class>/*)"
)

#: The protocols by name.
PROTOCOLS: dict[str, Protocol] = {
    entry.name: entry
    for entry in (
        Protocol(
            "fashion-mnist-ssl",
            fashion_mnist_ssl,
            (
                Root(
                    "root",
                    "--data",
                    "the folder holding the four Fashion-MNIST IDX files "
                    f"(default: {FASHION_MNIST_DEFAULT_ROOT})",
                    required=False,
                ),
            ),
            "grayscale",
            "Fashion-MNIST: classes 0-4 labeled, 5-9 unlabeled, t10k images of 5-9 test",
            image_size=28,
            in_memory=True,
        ),
        Protocol(
            "omniglot-ssl",
            omniglot_ssl,
            (
                Root(
                    "root",
                    "--data",
                    "the folder holding images_background_small1.zip and "
                    "images_background_small2.zip (default: $SLADE_DATA/omniglot)",
                    required=False,
                ),
            ),
            "grayscale",
            "Omniglot background-small: 3 alphabets labeled, 5 unlabeled, Greek+Latin test",
            image_size=28,
            in_memory=True,
            group_key="alphabet",
        ),
        Protocol(
            "folders",
            folders,
            (Root("root", "--data", "the folder holding labeled/, unlabeled/ and test/"),),
            None,
            f"your own images: {_FOLDERS_LAYOUT}",
            own_val=True,
        ),
        _pairing(
            "cub-nabirds",
            cub_nabirds,
            "CUB_200_2011",
            "NABirds",
            "CUB-200-2011 classes 1-100 labeled, NABirds unlabeled, CUB classes 101-200 test",
        ),
        _pairing(
            "cars-compcars",
            cars_compcars,
            "Cars-196",
            "CompCars",
            "Cars-196 classes 1-98 labeled, CompCars unlabeled, Cars-196 classes 99-196 test",
        ),
        _pairing(
            "inshop-fashion200k",
            inshop_fashion200k,
            "In-shop",
            "Fashion200k",
            "In-shop train items labeled, Fashion200k unlabeled, In-shop query vs gallery test",
        ),
    )
}


def protocol(name: str) -> Protocol:
    """The registry entry ``name``, or a ConfigError listing the known ones."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def load_protocol(name: str, *args: Any, **kwargs: Any) -> SemiSupervisedData:
    """The protocol ``name`` (a key of ``PROTOCOLS``), called with the given arguments."""
    return protocol(name).loader(*args, **kwargs)
