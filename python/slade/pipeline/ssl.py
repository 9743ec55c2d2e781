"""Stage ``ssl``: SwAV fine-tuning of the backbone on labeled + unlabeled images (Sec 3.1)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from .. import distributed, train
from .._images import (
    STAGE_CODES,
    StepBatches,
    TensorImages,
    TransformImages,
    as_image_dataset,
    derive_seed,
    training_images,
)
from ..config import Config, stage_trainer_arguments
from ..errors import ConfigError
from ..torch_train import TorchSwavTrainer
from .data_loading import data_or_load
from .inputs import as_config
from .stages import SSL, Callback, stage_files, train_loop
from .teacher import own_model_arguments, stage_model


def train_ssl(
    data: Any = None,
    config: Config | str | None = None,
    *,
    init: Any = None,
    out: str | os.PathLike | None = None,
    callback: Callback | None = None,
    model: Any = None,
) -> Any:
    """Self-supervised fine-tuning with SwAV on labeled + unlabeled images (Sec 3.1).

    Args:
        data: a :class:`slade.data.SemiSupervisedData`; ``None`` loads ``config.data``.
        config: a :class:`~slade.config.Config` or preset name (``ssl``, ``model``, run fields).
        init: starting backbone weights (a file, a state_dict or a slade model); default
            ``config.ssl.weights``, else the seeded random initialisation.
        out: this stage's folder (checkpoints, ``history.json``); ``None`` saves nothing.
            With files from an earlier call there, the stage resumes or is skipped.
        callback: ``callback("ssl", step, metrics)`` after each step.
        model: a ``torch.nn.Module`` of your own or a callable returning one, as for
            :func:`train_teacher` (it must take the local crops' size too); the step then
            runs in Python (:class:`slade.TorchSwavTrainer`).

    Returns:
        The :class:`slade.SwavTrainer` (:class:`slade.TorchSwavTrainer` with ``model``);
        ``.history`` holds the per-step metrics.
    """
    config = as_config(config)
    data = data_or_load(data, config)
    s = config.ssl
    trainer = _swav_trainer(config, model)
    files = stage_files(trainer, out, init if init is not None else s.weights)
    source = _ssl_images(data, config)
    count = len(source)
    if s.batch_size > count:
        raise ConfigError(f"ssl.batch_size ({s.batch_size}) exceeds the {count} training images")
    from ..data import RandomBatchSampler

    seed = derive_seed(config.seed, STAGE_CODES["ssl"])
    device = trainer.device

    def batches(start: int) -> Iterator[Any]:
        sampler = RandomBatchSampler(count, s.batch_size, seed=seed % 2**32)
        return StepBatches(
            source, sampler, torch.zeros(count, dtype=torch.int64), seed, start, device
        )

    def step(batch: Any) -> Any:
        return trainer.step(batch[0])

    return train_loop(SSL, trainer, files, s.steps, batches, step, config, callback)


def _swav_trainer(config: Config, model: Any) -> Any:
    s = config.ssl
    model = stage_model(config, model)
    distributed.check_share(s.batch_size, 1, "ssl.batch_size")
    if model is not None:
        return TorchSwavTrainer(model, **own_model_arguments(config, s), swav=s)
    return train.SwavTrainer(**stage_trainer_arguments(config, s), swav=s)


def _ssl_images(data: Any, config: Config) -> TensorImages | TransformImages:
    """Labeled and unlabeled images together, as SwAV multi-crops."""
    labeled, unlabeled = as_image_dataset(data.labeled), as_image_dataset(data.unlabeled)
    source_l = training_images(labeled, config.data.augment, 0)
    source_u = training_images(unlabeled, config.data.augment, 0)
    if isinstance(source_l, TensorImages) and isinstance(source_u, TensorImages):
        images = torch.cat([source_l.images, source_u.images])
        return TensorImages(images, 0, n_local=config.ssl.n_local)
    from torch.utils.data import ConcatDataset

    from ..data import multi_crop

    style = "grayscale" if config.model.in_channels == 1 else "natural"
    # Grayscale local crops of 16 px (the preset's 14 px is below the ConvNet's minimum).
    local_size = 16 if style == "grayscale" else None
    crops = multi_crop(style, n_local=config.ssl.n_local, local_size=local_size)
    both: ConcatDataset = ConcatDataset(
        [labeled.with_transform(crops), unlabeled.with_transform(crops)]
    )
    return TransformImages(both, config.data.num_workers)
