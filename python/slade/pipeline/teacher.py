"""Stage ``teacher``: a ranking loss on m-per-class batches of labeled images (Sec 3.1)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from .. import distributed, train
from .._images import STAGE_CODES, StepBatches, derive_seed, training_images
from ..config import Config, stage_trainer_arguments
from ..torch_train import TorchTeacherTrainer
from .data_loading import data_or_load
from .inputs import as_config
from .stages import TEACHER, Callback, stage_files, train_loop


def own_model_arguments(config: Config, section: Any) -> dict[str, Any]:
    """What a stage's trainer of a model of your own takes from the config: those of
    :func:`~slade.config.stage_trainer_arguments` but the model config, whose ``dim`` the
    module's embeddings must have, and ``distributed.sync_batchnorm``."""
    arguments = stage_trainer_arguments(config, section)
    arguments["dim"] = arguments.pop("model_config").dim
    arguments["sync_batchnorm"] = config.distributed.sync_batchnorm
    return arguments


def stage_model(config: Config, model: Any) -> Any:
    """What a stage trains: the user's module or factory; in a process group without one,
    ``config.model``'s network as a plain torch module (its initial weights those of the
    Rust network with the config's seed), so that the step can gather across ranks; None:
    the Rust network, stepped in Rust."""
    if model is not None or not distributed.active():
        return model
    from ..deploy.networks import to_torch
    from ..nn import EmbeddingModel

    return lambda: to_torch(EmbeddingModel(config.model, seed=config.seed)).train()


def _teacher_trainer(config: Config, model: Any) -> Any:
    t = config.teacher
    model = stage_model(config, model)
    distributed.check_share(t.batch_size, t.m, "teacher.batch_size")
    if model is not None:
        return TorchTeacherTrainer(model, **own_model_arguments(config, t), ranking=t)
    return train.TeacherTrainer(**stage_trainer_arguments(config, t), ranking=t)


def train_teacher(
    data: Any = None,
    config: Config | str | None = None,
    *,
    init: Any = None,
    out: str | os.PathLike | None = None,
    callback: Callback | None = None,
    model: Any = None,
) -> Any:
    """The teacher: ranking loss on m-per-class batches of labeled images (Sec 3.1).

    Args:
        data: a :class:`slade.data.SemiSupervisedData`; ``None`` loads ``config.data``.
        config: a :class:`~slade.config.Config` or preset name (``teacher``, ``model``).
        init: initial backbone: the SwAV trainer of :func:`train_ssl`, a weights file or a
            state_dict; default ``config.ssl.weights``, else the seeded random initialisation.
        out: this stage's folder; resumes or skips as for :func:`train_ssl`.
        callback: ``callback("teacher", step, metrics)`` after each step.
        model: a ``torch.nn.Module`` of your own (trained in place) or a callable returning
            one (called with torch's generators seeded with ``config.seed``), mapping images
            to ``(N, config.model.dim)`` embeddings; the step then runs in Python
            (:class:`slade.TorchTeacherTrainer`). ``init`` is then loaded by its names.

    Returns:
        The :class:`slade.TeacherTrainer` (:class:`slade.TorchTeacherTrainer` with
        ``model``); ``.history`` holds the per-step metrics.
    """
    config = as_config(config)
    data = data_or_load(data, config)
    t = config.teacher
    trainer = _teacher_trainer(config, model)
    files = stage_files(trainer, out, init if init is not None else config.ssl.weights)
    from ..data import MPerClassSampler

    labels = data.labeled.labels
    source = training_images(data.labeled, config.data.augment, config.data.num_workers)
    seed = derive_seed(config.seed, STAGE_CODES["teacher"])
    sampler = MPerClassSampler(labels, t.m, t.batch_size, seed=seed % 2**32)

    def batches(start: int) -> Iterator[Any]:
        return StepBatches(source, sampler, labels, seed, start, trainer.device)

    def step(batch: Any) -> Any:
        return trainer.step(batch[0], batch[1])

    return train_loop(TEACHER, trainer, files, t.steps, batches, step, config, callback)
