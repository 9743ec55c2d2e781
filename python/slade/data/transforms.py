"""Transform presets (torchvision.transforms) for training, evaluation and SwAV multi-crop.

Two styles:

* ``"grayscale"``: small grayscale images (Fashion-MNIST, Omniglot at 28x28). Training
  shifts images by up to ``shift`` pixels (zero padding = background); tensors in [0, 1].
* ``"natural"``: photographs (CUB, Cars, In-shop, ...). Training: RandomResizedCrop 224 +
  horizontal flip; evaluation: Resize 256 + CenterCrop 224; both normalised with the
  ImageNet mean and standard deviation (what ImageNet-initialised backbones expect).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torchvision import transforms as T
from torchvision.transforms import functional as F

from ..errors import ConfigError, InvalidArgumentError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomShift",
    "MultiCrop",
    "train_transform",
    "Preprocessing",
    "eval_preprocessing",
    "eval_transform",
    "multi_crop",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_STYLES = ("grayscale", "natural")


def check_style(style: str) -> str:
    if style not in _STYLES:
        raise ConfigError(f"unknown transform style {style!r}; expected one of {list(_STYLES)}")
    return style


class RandomShift(torch.nn.Module):
    """Translates an image by a uniform random integer offset in [-max_shift, max_shift] per axis.

    The image keeps its size; uncovered pixels take ``fill``. Offsets come from torch's RNG,
    so DataLoader workers are seeded the usual way.
    """

    def __init__(self, max_shift: int = 2, fill: float = 0) -> None:
        super().__init__()
        if max_shift < 0:
            raise InvalidArgumentError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = int(max_shift)
        self.fill = fill

    def forward(self, image: Any) -> Any:
        if self.max_shift == 0:
            return image
        width, height = F.get_image_size(image)
        padded = F.pad(image, [self.max_shift], fill=self.fill)
        top, left = torch.randint(0, 2 * self.max_shift + 1, (2,)).tolist()
        return F.crop(padded, top, left, height, width)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_shift={self.max_shift}, fill={self.fill})"


def train_transform(style: str = "natural", size: int | None = None, shift: int = 2) -> Callable:
    """Augmentation for supervised metric-learning training.

    ``"grayscale"``: random shifts of up to ``shift`` pixels (and a resize to ``size`` if
    given), then ToTensor. ``"natural"``: RandomResizedCrop(``size`` = 224), random
    horizontal flip, ToTensor, ImageNet normalisation.
    """
    if check_style(style) == "grayscale":
        steps: list[Any] = [T.Resize((size, size))] if size is not None else []
        return T.Compose(steps + [RandomShift(shift), T.ToTensor()])
    return T.Compose(
        [
            T.RandomResizedCrop(size or 224),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the network's input when embedding (evaluation, pseudo
    labelling, :func:`slade.embed`, the JSON beside an exported model), in order:

    1. decode and convert to ``mode`` (``"L"``: 1 channel, ``"RGB"``: 3);
    2. resize with PIL's bilinear filter: ``"square"`` to ``size`` x ``size``,
       ``"shorter_side"`` the shorter side to ``size`` keeping the aspect ratio
       (torchvision's ``Resize(size)``), None keeps the stored size;
    3. centre crop to ``crop`` x ``crop`` (top = round((H - crop) / 2), left likewise;
       torchvision's ``CenterCrop``), None for none;
    4. x / 255 as float32 in [0, 1], channels first;
    5. (x - mean) / std per channel.
    """

    mode: str
    resize: str | None = None
    size: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def input_size(self) -> int | None:
        """The side of the square input, None where it follows the image's size."""
        return self.crop or (self.size if self.resize == "square" else None)

    def transform(self) -> Callable:
        """The torchvision transform of PIL images (already in ``mode``) doing steps 2-5."""
        steps: list[Any] = []
        if self.resize == "square":
            steps.append(T.Resize((self.size, self.size)))
        elif self.resize == "shorter_side":
            steps.append(T.Resize(self.size))
        if self.crop is not None:
            steps.append(T.CenterCrop(self.crop))
        steps.append(T.ToTensor())
        if any(m != 0 for m in self.mean) or any(s != 1 for s in self.std):
            steps.append(T.Normalize(self.mean, self.std))
        return T.Compose(steps)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: Any, name: str = "preprocessing") -> Preprocessing:
        """Checks a dict written by :meth:`to_dict` (e.g. read from an export's JSON)."""
        if not isinstance(values, dict) or set(values) != {f.name for f in fields(cls)}:
            keys = sorted(f.name for f in fields(cls))
            raise ConfigError(f"{name} must be a dict with the keys {keys}, got {values!r}")
        made = cls(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])})
        if made.mode not in ("L", "RGB") or made.resize not in (None, "square", "shorter_side"):
            raise ConfigError(f"{name}: unknown mode or resize rule in {values!r}")
        if len(made.mean) != made.channels or len(made.std) != made.channels:
            raise ConfigError(f"{name}: mean and std need one value per channel, got {values!r}")
        return made


def eval_preprocessing(
    style: str = "natural", size: int | None = None, resize: int | None = None
) -> Preprocessing:
    """The evaluation preprocessing of a style.

    ``"grayscale"``: resized to ``size`` x ``size`` if given, values in [0, 1].
    ``"natural"``: shorter side to ``resize`` (default 8/7 of the crop: 256 for 224),
    CenterCrop(``size`` = 224), ImageNet normalisation.
    """
    if check_style(style) == "grayscale":
        return Preprocessing("L", "square" if size is not None else None, size)
    crop = size or 224
    return Preprocessing(
        "RGB", "shorter_side", resize or round(crop * 256 / 224), crop, IMAGENET_MEAN, IMAGENET_STD
    )


def eval_transform(
    style: str = "natural", size: int | None = None, resize: int | None = None
) -> Callable:
    """Deterministic preprocessing for embedding images (evaluation, pseudo labelling):
    :func:`eval_preprocessing`'s transform."""
    return eval_preprocessing(style, size, resize).transform()


class MultiCrop:
    """SwAV multi-crop (Caron et al. 2020, Sec 3.2): ``n_global`` views then ``n_local`` views.

    Returns a list of tensors, global crops first; a DataLoader collates it into a list of
    batches, one per crop position (crops at one position share their size).
    """

    def __init__(
        self, global_view: Callable, local_view: Callable, n_global: int = 2, n_local: int = 6
    ) -> None:
        if n_global < 2:
            raise InvalidArgumentError(
                f"SwAV needs at least 2 global crops, got n_global={n_global}"
            )
        if n_local < 0:
            raise InvalidArgumentError(f"n_local must be >= 0, got {n_local}")
        self.global_view = global_view
        self.local_view = local_view
        self.n_global = n_global
        self.n_local = n_local

    def __call__(self, image: Any) -> list[Any]:
        views = [self.global_view(image) for _ in range(self.n_global)]
        return views + [self.local_view(image) for _ in range(self.n_local)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_global={self.n_global}, n_local={self.n_local},\n"
            f"  global_view={self.global_view!r},\n  local_view={self.local_view!r})"
        )


def multi_crop(
    style: str = "natural",
    n_local: int = 6,
    global_size: int | None = None,
    local_size: int | None = None,
    global_scale: Sequence[float] | None = None,
    local_scale: Sequence[float] | None = None,
) -> MultiCrop:
    """The multi-crop augmentation of the self-supervised (SwAV) step: 2 global + ``n_local`` crops.

    ``"natural"`` follows SwAV's ImageNet recipe: 224 px global crops of scale (0.14, 1),
    96 px local crops of scale (0.05, 0.14), each with horizontal flip, colour jitter
    (0.8, 0.8, 0.8, 0.2; p 0.8), random grayscale (p 0.2), Gaussian blur (p 0.5) and ImageNet
    normalisation. ``"grayscale"`` is our scaled-down choice for 28x28 images: 28 px global
    crops of scale (0.4, 1), 14 px local crops of scale (0.1, 0.4), brightness/contrast
    jitter (0.4; p 0.8), no flip (handedness matters for characters).
    """
    if check_style(style) == "natural":
        global_size, local_size = global_size or 224, local_size or 96
        global_scale, local_scale = global_scale or (0.14, 1.0), local_scale or (0.05, 0.14)

        def view(size: int, scale: Sequence[float]) -> Callable:
            return T.Compose(
                [
                    T.RandomResizedCrop(size, scale=tuple(scale)),
                    T.RandomHorizontalFlip(),
                    T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                    T.RandomGrayscale(p=0.2),
                    T.RandomApply(
                        [T.GaussianBlur(kernel_size=_odd(size // 10), sigma=(0.1, 2.0))], p=0.5
                    ),
                    T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                ]
            )

    else:
        global_size, local_size = global_size or 28, local_size or 14
        global_scale, local_scale = global_scale or (0.4, 1.0), local_scale or (0.1, 0.4)

        def view(size: int, scale: Sequence[float]) -> Callable:
            return T.Compose(
                [
                    T.RandomResizedCrop(size, scale=tuple(scale)),
                    T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
                    T.ToTensor(),
                ]
            )

    return MultiCrop(view(global_size, global_scale), view(local_size, local_scale), 2, n_local)


def _odd(value: int) -> int:
    value = max(3, value)
    return value if value % 2 else value + 1
