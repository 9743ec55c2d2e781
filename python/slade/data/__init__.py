"""Data sets, semi-supervised protocols, batch samplers and transforms.

Loaders read the official on-disk layouts and never download. Every data set is a
``torch.utils.data.Dataset`` of ``(image, label)`` with an optional torchvision ``transform``,
``labels`` (int64 tensor) and ``classes`` (names). Protocols (:func:`load_protocol`) return a
:class:`SemiSupervisedData` with labeled, unlabeled (labels hidden), optional validation and
test parts.
"""

from .base import (
    UNLABELED,
    ImageDataset,
    ImageFileDataset,
    ImageTensorDataset,
    UnlabeledDataset,
    concat,
    split_classes,
    split_images_per_class,
)
from .datasets import (
    CUB200,
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
from .protocols import (
    PRESET,
    PROTOCOLS,
    FileOptions,
    Protocol,
    Root,
    SemiSupervisedData,
    cars_compcars,
    cub_nabirds,
    fashion_mnist_ssl,
    folders,
    inshop_fashion200k,
    load_protocol,
    omniglot_ssl,
    protocol,
    with_val_in_pool,
)
from .samplers import MPerClassSampler, RandomBatchSampler
from .transforms import (
    MultiCrop,
    Preprocessing,
    RandomShift,
    eval_preprocessing,
    eval_transform,
    multi_crop,
    train_transform,
)

__all__ = [
    "UNLABELED",
    "ImageDataset",
    "ImageFileDataset",
    "ImageTensorDataset",
    "UnlabeledDataset",
    "concat",
    "split_classes",
    "split_images_per_class",
    "with_val_in_pool",
    "CUB200",
    "Cars196",
    "CompCars",
    "Fashion200k",
    "FashionMNIST",
    "ImageFolderDataset",
    "InShop",
    "NABirds",
    "Omniglot",
    "unlabeled_images",
    "PRESET",
    "FileOptions",
    "PROTOCOLS",
    "Protocol",
    "Root",
    "SemiSupervisedData",
    "protocol",
    "load_protocol",
    "fashion_mnist_ssl",
    "omniglot_ssl",
    "folders",
    "cub_nabirds",
    "cars_compcars",
    "inshop_fashion200k",
    "MPerClassSampler",
    "RandomBatchSampler",
    "MultiCrop",
    "RandomShift",
    "train_transform",
    "Preprocessing",
    "eval_preprocessing",
    "eval_transform",
    "multi_crop",
]
