"""Dataset types shared by every loader: labeled images, unlabeled images, class-disjoint splits.

Every data set is a :class:`torch.utils.data.Dataset` of ``(image, label)`` pairs, like
torchvision's: ``image`` is a PIL image passed through the optional ``transform``, ``label``
an int indexing ``classes``. ``labels`` holds all labels as an int64 tensor.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DtypeError, InvalidArgumentError, ShapeError
from ._files import load_image

if TYPE_CHECKING:
    from typing_extensions import Self

#: The label an unlabeled dataset returns in place of a class.
UNLABELED = -1

Transform = Callable[[Any], Any]


def _as_index_array(indices: Any, length: int, name: str) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    array = np.asarray(indices)
    if array.dtype == np.bool_:
        if array.shape != (length,):
            raise ShapeError(f"{name}: a boolean mask must have length {length}, got {array.shape}")
        return np.flatnonzero(array)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise DtypeError(
            f"{name} must be a 1-D sequence of integer indices, got {array.dtype} {array.shape}"
        )
    array = array.astype(np.int64)
    if array.min() < 0 or array.max() >= length:
        raise InvalidArgumentError(
            f"{name} must lie in [0, {length}), got values in [{array.min()}, {array.max()}]"
        )
    return array


def as_label_tensor(labels: Any, name: str, length: int | None = None) -> torch.Tensor:
    """Labels as a 1-D int64 CPU tensor (from a tensor, numpy array or sequence of ints)."""
    if isinstance(labels, torch.Tensor):
        tensor = labels.detach().cpu()
    else:
        array = np.asarray(labels)
        if array.size == 0:
            array = array.astype(np.int64)
        if array.dtype.kind not in "iu":
            raise DtypeError(f"{name} must hold integers, got dtype {array.dtype}")
        tensor = torch.from_numpy(array.astype(np.int64))
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.is_complex():
        raise DtypeError(f"{name} must hold integers, got {tensor.dtype}")
    if tensor.dim() != 1:
        raise ShapeError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    if length is not None and tensor.numel() != length:
        raise ShapeError(f"{name} must have one entry per image ({length}), got {tensor.numel()}")
    return tensor.to(torch.int64).contiguous()


class ImageDataset(Dataset):
    """Images with integer labels indexing ``classes``; subclasses say where images come from.

    Attributes:
        labels: ``(N,)`` int64 tensor; ``UNLABELED`` (-1) where no label is known.
        classes: class names, ``classes[labels[i]]`` names image i's class.
        transform: applied to each PIL image on access (a torchvision transform or any callable).
        extras: per-image metadata (numpy arrays of length N, e.g. Omniglot's ``drawer``),
            kept aligned through :meth:`subset`.
        root: the folder the images were read from, where there is one.
    """

    root: Path | None = None

    def __init__(
        self,
        labels: Any,
        classes: Sequence[str],
        transform: Transform | None = None,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.labels = as_label_tensor(labels, "labels")
        self.classes = list(classes)
        if self.labels.numel() and int(self.labels.max()) >= len(self.classes):
            raise InvalidArgumentError(
                f"labels go up to {int(self.labels.max())} "
                f"but there are {len(self.classes)} classes"
            )
        self.transform = transform
        self.extras = {key: np.asarray(value) for key, value in (extras or {}).items()}
        for key, value in self.extras.items():
            if len(value) != len(self.labels):
                raise ShapeError(
                    f"extras[{key!r}] has {len(value)} entries for {len(self.labels)} images"
                )

    # Subclasses implement these two.
    def load_image(self, index: int) -> Image.Image:
        """The decoded image ``index`` before ``transform``."""
        raise NotImplementedError

    def _take(self, rows: np.ndarray) -> Self:
        """A shallow copy holding only the images ``rows`` (labels are set by the caller)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    @property
    def targets(self) -> torch.Tensor:
        """Alias of ``labels`` (torchvision's name)."""
        return self.labels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def with_transform(self, transform: Transform | None) -> Self:
        """The same images and labels with another transform (the data is shared, not copied)."""
        clone = copy.copy(self)
        clone.transform = transform
        return clone

    def subset(self, indices: Any, relabel: bool = True) -> Self:
        """The images ``indices`` (ints or a boolean mask), as a dataset of the same type.

        With ``relabel`` (default) the classes are narrowed to those present and labels
        renumbered ``0..C-1`` in the original class order, so the subset can feed a
        classifier with ``C`` outputs; otherwise labels and ``classes`` are kept as they are.
        """
        rows = _as_index_array(indices, len(self), "indices")
        clone = self._take(rows)
        labels = self.labels[torch.from_numpy(rows)]
        clone.extras = {key: value[rows] for key, value in self.extras.items()}
        if relabel:
            labels, clone.classes = _renumber(labels, self.classes)
        else:
            clone.classes = list(self.classes)
        clone.labels = labels
        return clone

    def with_labels(self, labels: Any, classes: Sequence[str] | None = None) -> Self:
        """The same images with other labels, e.g. k-means pseudo labels.

        ``classes`` defaults to ``["cluster_0", ..., "cluster_{K-1}"]`` with K = max label + 1.
        """
        labels = as_label_tensor(labels, "labels", len(self))
        if labels.numel() and int(labels.min()) < 0:
            raise InvalidArgumentError("labels must be >= 0")
        count = int(labels.max()) + 1 if labels.numel() else 0
        if classes is None:
            classes = [f"cluster_{k}" for k in range(count)]
        elif len(classes) < count:
            raise InvalidArgumentError(
                f"labels go up to {count - 1} but only {len(classes)} classes are named"
            )
        clone = copy.copy(self)
        clone.labels = labels
        clone.classes = list(classes)
        return clone

    def __repr__(self) -> str:
        lines = [
            f"Dataset {type(self).__name__}",
            f"    Number of datapoints: {len(self)}",
            f"    Number of classes: {self.num_classes}",
        ]
        root = getattr(self, "root", None)
        if root is not None:
            lines.append(f"    Root location: {root}")
        split = getattr(self, "split", None)
        if split is not None:
            lines.append(f"    Split: {split}")
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}".replace("\n", "\n    "))
        return "\n".join(lines)


def _renumber(labels: torch.Tensor, classes: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Renumbers the labels present to 0..C-1 (original order kept); -1 stays -1."""
    known = labels >= 0
    present = torch.unique(labels[known])
    mapping = torch.full((max(len(classes), 1),), UNLABELED, dtype=torch.int64)
    mapping[present] = torch.arange(present.numel(), dtype=torch.int64)
    renumbered = torch.where(known, mapping[labels.clamp(min=0)], labels)
    return renumbered, [classes[int(c)] for c in present]


class ImageFileDataset(ImageDataset):
    """Images stored as files, decoded on access (lazily).

    Attributes:
        paths: one image file per entry.
        mode: PIL mode the images are converted to ("RGB" or "L").
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Any,
        classes: Sequence[str],
        transform: Transform | None = None,
        mode: str = "RGB",
        extras: dict[str, np.ndarray] | None = None,
        listed_in: Path | None = None,
    ) -> None:
        super().__init__(labels, classes, transform, extras)
        self.paths = [Path(p) for p in paths]
        if len(self.paths) != len(self.labels):
            raise ShapeError(f"{len(self.paths)} image paths for {len(self.labels)} labels")
        self.mode = mode
        self.listed_in = listed_in

    def load_image(self, index: int) -> Image.Image:
        return load_image(self.paths[index], self.mode, self.listed_in)

    def _take(self, rows: np.ndarray) -> Self:
        clone = copy.copy(self)
        clone.paths = [self.paths[i] for i in rows]
        return clone

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path, label)`` pairs (torchvision's ImageFolder name)."""
        return [(str(p), int(y)) for p, y in zip(self.paths, self.labels)]


class ImageTensorDataset(ImageDataset):
    """Images held in memory as one uint8 tensor, ``(N, H, W)`` grayscale or ``(N, H, W, 3)`` RGB.

    ``images`` is available directly for batched tensor work; item access returns PIL
    images like torchvision's MNIST so the same transforms apply.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: Any,
        classes: Sequence[str],
        transform: Transform | None = None,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__(labels, classes, transform, extras)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise DtypeError("images must be a uint8 torch.Tensor")
        if images.dim() not in (3, 4) or (images.dim() == 4 and images.shape[-1] != 3):
            raise ShapeError(f"images must be (N, H, W) or (N, H, W, 3), got {tuple(images.shape)}")
        if images.shape[0] != len(self.labels):
            raise ShapeError(f"{images.shape[0]} images for {len(self.labels)} labels")
        self.images = images

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index].numpy())  # 2-D uint8 -> "L", (H, W, 3) -> "RGB"

    def _take(self, rows: np.ndarray) -> Self:
        clone = copy.copy(self)
        clone.images = self.images[torch.from_numpy(rows)]
        return clone


class UnlabeledDataset(Dataset):
    """Images whose labels training must not see: items are ``(image, UNLABELED)``.

    The true labels, where the data has any, stay available as ``hidden_labels`` (with
    ``hidden_classes``) for reporting NMI or purity of the pseudo labels; training code
    should only read them for evaluation.
    """

    def __init__(self, images: ImageDataset, labels_known: bool = True) -> None:
        self._images = images
        self._labels_known = labels_known

    @property
    def hidden_labels(self) -> torch.Tensor | None:
        """The true labels (int64 tensor), or None where the data comes without labels."""
        return self._images.labels if self._labels_known else None

    @property
    def hidden_classes(self) -> list[str] | None:
        return self._images.classes if self._labels_known else None

    @property
    def transform(self) -> Transform | None:
        return self._images.transform

    @property
    def extras(self) -> dict[str, np.ndarray]:
        return self._images.extras

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self._images.load_image(index)
        if self._images.transform is not None:
            image = self._images.transform(image)
        return image, UNLABELED

    def load_image(self, index: int) -> Image.Image:
        return self._images.load_image(index)

    def with_transform(self, transform: Transform | None) -> UnlabeledDataset:
        return UnlabeledDataset(self._images.with_transform(transform), self._labels_known)

    def subset(self, indices: Any) -> UnlabeledDataset:
        return UnlabeledDataset(self._images.subset(indices, relabel=False), self._labels_known)

    def with_images(self, images: ImageDataset) -> UnlabeledDataset:
        """This pool plus ``images`` (their labels become hidden labels, or are dropped
        where this pool has none)."""
        if not self._labels_known:
            images = copy.copy(images)
            images.labels = torch.full_like(images.labels, UNLABELED)
            images.classes = []
        return UnlabeledDataset(concat(self._images, images), self._labels_known)

    def with_labels(self, labels: Any, classes: Sequence[str] | None = None) -> ImageDataset:
        """A labeled dataset of the same images, e.g. with the teacher's pseudo labels (Sec 3.2)."""
        return self._images.with_labels(labels, classes)

    def __repr__(self) -> str:
        known = "hidden labels kept" if self._labels_known else "no labels"
        name = type(self._images).__name__
        return f"Unlabeled {name}\n    Number of datapoints: {len(self)} ({known})"


def split_classes(
    dataset: ImageDataset, num_classes: int | float, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Splits off ``num_classes`` whole classes (an int, or a fraction of the classes) at random.

    Returns ``(rest, held_out)``, class-disjoint, each relabeled ``0..C-1``; the choice of
    classes depends only on ``seed`` and the labels. This is the validation split carved
    from labeled classes (tuning on it, never on test).
    """
    present = torch.unique(dataset.labels[dataset.labels >= 0]).numpy()
    total = len(present)
    if isinstance(num_classes, float) and not float(num_classes).is_integer():
        if not 0.0 < num_classes < 1.0:
            raise InvalidArgumentError(
                f"a fraction of classes must lie in (0, 1), got {num_classes}"
            )
        count = max(1, int(round(num_classes * total)))
    else:
        count = int(num_classes)
    if not 1 <= count < total:
        raise InvalidArgumentError(
            f"cannot hold out {count} of {total} classes: need 1 <= num_classes < {total}"
        )
    rng = np.random.default_rng(seed)
    held_out = np.sort(rng.choice(present, size=count, replace=False))
    mask = np.isin(dataset.labels.numpy(), held_out)
    return dataset.subset(~mask), dataset.subset(mask)


def split_groups(
    dataset: ImageDataset, groups: np.ndarray, count: int, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Splits off ``count`` whole class groups (``groups``: one group name per image, e.g.
    Omniglot's alphabet) at random, so that the held-out classes, like a protocol's test
    classes, come from groups never seen with labels.

    Returns ``(rest, held_out)`` as :func:`split_classes`; the choice depends only on
    ``seed`` and the group names.
    """
    groups = np.asarray(groups)
    if groups.shape != (len(dataset),):
        raise InvalidArgumentError(
            f"groups must name one group per image ({len(dataset)}), got shape {groups.shape}"
        )
    present = np.unique(groups)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count < len(present):
        raise InvalidArgumentError(
            f"val_groups must be an integer in [1, {len(present)}) (the data has "
            f"{len(present)} class groups: {[str(g) for g in present]}), got {count!r}"
        )
    held_out = np.random.default_rng(seed).choice(present, size=int(count), replace=False)
    mask = np.isin(groups, held_out)
    return dataset.subset(~mask), dataset.subset(mask)


def concat(first: ImageDataset, second: ImageDataset) -> ImageDataset:
    """The images of ``first`` then ``second`` (same dataset type) as one dataset.

    Classes are merged by name: ``first``'s keep their numbers, ``second``'s new names are
    appended. Extras present in both are concatenated, others dropped; the transform is
    ``first``'s.
    """
    in_memory = isinstance(first, ImageTensorDataset), isinstance(second, ImageTensorDataset)
    files = isinstance(first, ImageFileDataset), isinstance(second, ImageFileDataset)
    if not (all(in_memory) or all(files)):
        raise InvalidArgumentError(
            f"cannot concatenate a {type(first).__name__} and a {type(second).__name__}: "
            "both must hold images in memory or both image files"
        )
    classes = list(first.classes)
    index = {name: i for i, name in enumerate(classes)}
    for name in second.classes:
        if name not in index:
            index[name] = len(classes)
            classes.append(name)
    remap = torch.tensor([index[name] for name in second.classes] or [0], dtype=torch.int64)
    second_labels = torch.where(
        second.labels >= 0, remap[second.labels.clamp(min=0)], second.labels
    )
    clone: ImageDataset
    if isinstance(first, ImageTensorDataset) and isinstance(second, ImageTensorDataset):
        if first.images.shape[1:] != second.images.shape[1:]:
            raise ShapeError(
                f"cannot concatenate images of shape {tuple(first.images.shape[1:])} "
                f"and {tuple(second.images.shape[1:])}"
            )
        tensors = copy.copy(first)
        tensors.images = torch.cat([first.images, second.images])
        clone = tensors
    else:
        assert isinstance(first, ImageFileDataset) and isinstance(second, ImageFileDataset)
        if first.mode != second.mode:
            raise InvalidArgumentError(
                f"cannot concatenate {first.mode} and {second.mode} image files"
            )
        listed = copy.copy(first)
        listed.paths = first.paths + second.paths
        clone = listed
    clone.labels = torch.cat([first.labels, second_labels])
    clone.classes = classes
    clone.extras = {
        key: np.concatenate([value, second.extras[key]])
        for key, value in first.extras.items()
        if key in second.extras
    }
    return clone


def split_images_per_class(
    dataset: ImageDataset, fraction: float, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Splits each class's images at random: ``(rest, taken)``, ``taken`` holding
    ``round(fraction * n)`` of each class's ``n`` images; each part relabeled ``0..C-1``
    over the classes it holds, as :func:`split_classes` does."""
    if not 0.0 < fraction < 1.0:
        raise InvalidArgumentError(f"a fraction of images must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels = dataset.labels.numpy()
    taken = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        count = int(round(fraction * len(rows)))
        taken[rng.choice(rows, size=count, replace=False)] = True
    return dataset.subset(~taken), dataset.subset(taken)
