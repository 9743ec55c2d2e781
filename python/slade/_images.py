"""Training batches and embedding inputs for the pipeline, reproducible step by step.

The images of step t of a stage and their augmentation derive only from (seed, stage, t):
batch indices come from a seeded epoch-wise sampler entered at epoch t // n, batch t % n,
and the augmentation of a batch (or of each image in it) from a generator seeded with
(seed, stage, t). A run resumed from a checkpoint at step t therefore sees exactly the
batches an uninterrupted run sees.

In-memory grayscale images (Fashion-MNIST, Omniglot) are augmented batch-wise on their
uint8 arrays (random shifts in numpy: 0.5 ms for 64 images against 5 ms through the
per-image PIL preset on a 2-core CPU; SwAV crops with torch's grid_sample); other data go
through the dataset's own transform, one seeded generator per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from . import distributed
from .data.base import ImageDataset, ImageTensorDataset, UnlabeledDataset
from .data.transforms import RandomShift

# Stage codes mixed into the seeds.
STAGE_CODES = {"subset": 1, "ssl": 2, "teacher": 3, "student_labeled": 4, "student_unlabeled": 5, "val_in_pool": 6}


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def as_image_dataset(dataset: Any) -> ImageDataset:
    """The images of an unlabeled part as an ImageDataset (labels all 0), others unchanged."""
    if isinstance(dataset, UnlabeledDataset):
        return dataset.with_labels(torch.zeros(len(dataset), dtype=torch.int64))
    return dataset


def batches_from(sampler: Any, start: int) -> Iterator[list[int]]:
    """The sampler's batches from global batch ``start`` on, across epochs: batch t is batch
    ``t % len(sampler)`` of epoch ``t // len(sampler)``."""
    per_epoch = len(sampler)
    sampler.set_epoch(start // per_epoch)
    skip = start % per_epoch
    while True:
        for batch in sampler:
            if skip:
                skip -= 1
                continue
            yield batch


# --------------------------------------------------------------------------- tensor path


def _transform_steps(transform: Any) -> list[Any] | None:
    if transform is None:
        return None
    steps = getattr(transform, "transforms", None)
    return list(steps) if steps is not None else [transform]


def tensor_shift(dataset: Any) -> int | None:
    """The maximal shift if ``dataset`` holds grayscale images in memory whose transform is
    the grayscale preset (optional RandomShift, then ToTensor), else None."""
    from torchvision import transforms as T

    base = as_image_dataset(dataset)
    if not isinstance(base, ImageTensorDataset) or base.images.dim() != 3:
        return None
    steps = _transform_steps(base.transform)
    if not steps or not isinstance(steps[-1], T.ToTensor):
        return None
    shift = 0
    for step in steps[:-1]:
        if not isinstance(step, RandomShift) or step.fill != 0:
            return None
        shift += step.max_shift
    return shift


def shift_batch(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Random translations of a uint8 batch (B, H, W) by integers in [-max_shift, max_shift]
    per axis with zero fill: :class:`slade.data.RandomShift` applied to each image.

    numpy, single-threaded: for batches this small torch's intra-op threads cost more than
    the work (tens of milliseconds per op on a busy 2-core machine)."""
    if max_shift == 0:
        return images
    count, height, width = images.shape
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    offsets = rng.integers(0, 2 * max_shift + 1, size=(count, 2))
    rows = offsets[:, :1] + np.arange(height)
    cols = offsets[:, 1:] + np.arange(width)
    return padded[np.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]


def to_float(images: Any) -> torch.Tensor:
    """uint8 (B, H, W) -> float32 (B, 1, H, W) in [0, 1], bit for bit as ToTensor (x / 255)."""
    array = images.numpy() if isinstance(images, torch.Tensor) else images
    return torch.from_numpy(np.divide(array[:, None], np.float32(255), dtype=np.float32))


def resized_crops(
    images: torch.Tensor,
    size: int,
    scale: Sequence[float],
    g: torch.Generator,
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Batched RandomResizedCrop of float (B, 1, H, W) images to ``size`` (bilinear): each
    crop covers a random fraction in ``scale`` of the area with a log-uniform aspect ratio
    in ``ratio``, at a random position, clipped to the image."""
    count = images.shape[0]
    area = torch.empty(count).uniform_(scale[0], scale[1], generator=g)
    log_ratio = torch.empty(count).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    aspect = log_ratio.exp()
    width = (area * aspect).sqrt().clamp(max=1.0)
    height = (area / aspect).sqrt().clamp(max=1.0)
    center_x = (torch.rand(count, generator=g) * 2 - 1) * (1 - width)
    center_y = (torch.rand(count, generator=g) * 2 - 1) * (1 - height)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width, center_x
    theta[:, 1, 1], theta[:, 1, 2] = height, center_y
    grid = F.affine_grid(theta, [count, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def jitter(images: torch.Tensor, strength: float, p: float, g: torch.Generator) -> torch.Tensor:
    """Brightness then contrast jitter (factors uniform in [1 - strength, 1 + strength]) on a
    random fraction ``p`` of a float batch, clamped to [0, 1]; the grayscale multi-crop
    preset's ColorJitter(0.4, 0.4) with p 0.8, in a fixed order."""
    count = images.shape[0]
    apply = (torch.rand(count, generator=g) < p).float().view(-1, 1, 1, 1)
    bright = 1 + (torch.rand(count, generator=g) * 2 - 1).view(-1, 1, 1, 1) * strength
    contrast = 1 + (torch.rand(count, generator=g) * 2 - 1).view(-1, 1, 1, 1) * strength
    out = (images * bright).clamp(0, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean).clamp(0, 1)
    return apply * out + (1 - apply) * images


class TensorImages:
    """In-memory grayscale images (uint8, N x H x W), augmented batch-wise."""

    def __init__(self, images: torch.Tensor, shift: int, n_local: int | None = None) -> None:
        self.images = images
        self._array = images.numpy()
        self.shift = shift
        self.n_local = n_local

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, indices: Sequence[int], seed: int) -> torch.Tensor | list[torch.Tensor]:
        """Shifted images, or the SwAV crops when the source was made with ``n_local``."""
        if self.n_local is not None:
            return self.crops(indices, seed, self.n_local)
        chosen = self._array[np.asarray(indices, dtype=np.int64)]
        return to_float(shift_batch(chosen, self.shift, np.random.default_rng(seed)))

    def crops(self, indices: Sequence[int], seed: int, n_local: int) -> list[torch.Tensor]:
        """SwAV multi-crop: 2 global crops (full size, scale 0.4-1) and ``n_local`` local
        ones (half size but at least 16 px, the ConvNet's minimum; scale 0.1-0.4), each
        with brightness/contrast jitter (p 0.8); the grayscale :func:`slade.data.multi_crop`
        preset, batch-wise."""
        g = generator(seed)
        chosen = to_float(self._array[np.asarray(indices, dtype=np.int64)])
        size = chosen.shape[-1]
        views = [jitter(resized_crops(chosen, size, (0.4, 1.0), g), 0.4, 0.8, g) for _ in range(2)]
        local = min(size, max(16, size // 2))
        views += [
            jitter(resized_crops(chosen, local, (0.1, 0.4), g), 0.4, 0.8, g) for _ in range(n_local)
        ]
        return views


# --------------------------------------------------------------------------- transform path


class _SeededItems(Dataset):
    """Items ``(index, seed)``: ``dataset[index]`` with torch's generator seeded first."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index][0]


class TransformImages:
    """Images loaded and augmented per image by the dataset's transform (PIL), optionally in
    DataLoader workers."""

    def __init__(
        self, dataset: Any, num_workers: int = 0, transform: Callable | None = None
    ) -> None:
        base = as_image_dataset(dataset)
        self.dataset = base.with_transform(transform) if transform is not None else base
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def keyed(self, indices: Sequence[int], seed: int) -> list[tuple[int, int]]:
        return [(int(i), derive_seed(seed, position)) for position, i in enumerate(indices)]

    def loader(self, keyed_batches: Iterator[list[tuple[int, int]]]) -> Iterator[Any]:
        """Collated batches for an iterator of keyed index batches."""
        return iter(
            DataLoader(
                _SeededItems(self.dataset),
                batch_sampler=_IterableBatches(keyed_batches),
                num_workers=self.num_workers,
                persistent_workers=False,
            )
        )


class _IterableBatches:
    """A one-pass batch sampler over an iterator (DataLoader only iterates it)."""

    def __init__(self, batches: Iterator[list]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list]:
        return self.batches


def training_images(dataset: Any, augment: str, num_workers: int) -> TensorImages | TransformImages:
    """The batch source of a training part: tensors when possible (``augment="auto"``)."""
    shift = tensor_shift(dataset) if augment == "auto" else None
    if shift is not None:
        return TensorImages(cast(ImageTensorDataset, as_image_dataset(dataset)).images, shift)
    return TransformImages(dataset, num_workers)


def _keyed(
    source: TransformImages,
    indices: Iterator[list[int]],
    seed: int,
    start: int,
    pending: list[list[int]],
) -> Iterator[list]:
    """Keyed index batches of steps ``start, start + 1, ...``, each also queued in
    ``pending`` until its images arrive."""
    step = start
    for batch in indices:
        pending.append(batch)
        yield source.keyed(batch, derive_seed(seed, step))[distributed.share(len(batch))]
        step += 1


class StepBatches:
    """The (images, labels) of steps ``start, start + 1, ...`` of one stage; in a process
    group, this rank's share of each (:func:`slade.distributed.share`): its rows of the batch
    one process draws, each image augmented as it is there."""

    def __init__(
        self,
        source: TensorImages | TransformImages,
        sampler: Any,
        labels: torch.Tensor,
        seed: int,
        start: int,
        device: torch.device,
    ) -> None:
        self.source = source
        self.labels = labels
        self.device = device
        self.step = start
        indices = batches_from(sampler, start)
        if isinstance(source, TensorImages):
            self._indices = indices
            self._loaded = None
        else:
            # No reference back to self: the DataLoader iterator is then freed (and its
            # workers stopped) as soon as this object is, not by a later garbage collection,
            # which would first close the queues its shutdown needs (5 s lost per worker).
            self._pending: list[list[int]] = []
            self._loaded = source.loader(_keyed(source, indices, seed, start, self._pending))
        self.seed = seed

    def __iter__(self) -> StepBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        """Images (a tensor, or a list of crops for a multi-crop transform) and labels."""
        if self._loaded is None:
            batch = next(self._indices)
            images = cast(TensorImages, self.source).batch(batch, derive_seed(self.seed, self.step))
        else:
            images = next(self._loaded)
            batch = self._pending.pop(0)
        self.step += 1
        rows = distributed.share(len(batch))
        labels = self.labels[torch.as_tensor(batch, dtype=torch.int64)][rows]
        if self._loaded is None:  # the whole batch was augmented: its rows are taken here
            images = [view[rows] for view in images] if isinstance(images, list) else images[rows]
        if isinstance(images, (list, tuple)):
            return [view.to(self.device) for view in images], labels.to(self.device)
        return images.to(self.device), labels.to(self.device)


# --------------------------------------------------------------------------- embedding


def eval_tensor_images(dataset: Any) -> torch.Tensor | None:
    """uint8 images of an in-memory grayscale dataset whose transform is just ToTensor."""
    from torchvision import transforms as T

    base = as_image_dataset(dataset)
    if not isinstance(base, ImageTensorDataset) or base.images.dim() != 3:
        return None
    steps = _transform_steps(base.transform)
    if steps is None or len(steps) != 1 or not isinstance(steps[0], T.ToTensor):
        return None
    return base.images


def embed_dataset(
    model: Any,
    dataset: Any,
    *,
    batch_size: int,
    num_workers: int = 0,
    progress: Callable[[Iterator, int, str], Iterator] | None = None,
    description: str = "embed",
    gather: bool = True,
) -> torch.Tensor:
    """Embeddings (on the CPU) of every image of ``dataset``, in no-grad eval-mode batches of
    ``batch_size`` on the model's device; in a process group each rank embeds its shard
    (:func:`slade.distributed.shard_range`) and every rank gets all the embeddings, or with
    ``gather=False`` those of its shard."""
    device = model.device
    images = eval_tensor_images(dataset)
    count = len(dataset) if images is None else int(images.shape[0])
    if 0 < count < distributed.world_size():
        raise ValueError(f"cannot embed {count} images on {distributed.world_size()} ranks")
    shard = distributed.shard_range(count)
    if distributed.world_size() > 1:
        if images is not None:
            images = images[shard.start : shard.stop]
        else:
            dataset = Subset(as_image_dataset(dataset), shard)
    parts = []
    if images is not None:
        chunk = max(batch_size, 4096)
        starts = range(0, int(images.shape[0]), chunk)
        iterator = progress(iter(starts), len(starts), description) if progress else starts
        for start in iterator:
            x = to_float(images[start : start + chunk]).to(device)
            parts.append(model.embed(x, batch_size=batch_size).cpu())
    else:
        loader = DataLoader(
            as_image_dataset(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers
        )
        batches = progress(iter(loader), len(loader), description) if progress else loader
        for x, _ in batches:
            parts.append(model.embed(x.to(device), batch_size=batch_size).cpu())
    if not parts:
        raise ValueError("cannot embed an empty dataset")
    return distributed.gather_rows(torch.cat(parts)) if gather else torch.cat(parts)
