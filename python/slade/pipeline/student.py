"""Stage ``student_round<r>``: labels + pseudo labels + feature basis (Sec 3.3)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .. import distributed, train
from .._images import STAGE_CODES, StepBatches, derive_seed, training_images
from ..config import Config, stage_trainer_arguments
from ..errors import ConfigError, InvalidArgumentError
from ..torch_train import TorchStudentTrainer
from .data_loading import data_or_load
from .inputs import as_config, as_model
from .pseudo_labels import PseudoLabels
from .stages import Callback, StageFiles, stage_files, student_id, train_loop
from .teacher import own_model_arguments, stage_model


def _student_trainer(config: Config, num_basis: int, k: int, model: Any) -> Any:
    s = config.student
    if s.num_basis is not None and s.num_basis < num_basis and s.variant != "pseudo_only":
        raise ConfigError(
            f"student.num_basis ({s.num_basis}) must be at least the number of labeled "
            f"classes ({num_basis}): L_CE needs one basis vector per labeled class"
        )
    pseudo_classes = s.num_pseudo_classes if s.num_pseudo_classes is not None else k
    objective: dict[str, Any] = dict(
        objective=s,
        num_basis=s.num_basis if s.num_basis is not None else num_basis,
        num_pseudo_classes=pseudo_classes if s.regularizer != "sd" else None,
    )
    model = stage_model(config, model)
    distributed.check_share(s.labeled_batch_size, s.labeled_m, "student.labeled_batch_size")
    distributed.check_share(s.unlabeled_batch_size, s.unlabeled_m, "student.unlabeled_batch_size")
    if model is not None:
        return TorchStudentTrainer(model, **own_model_arguments(config, s), **objective)
    return train.StudentTrainer(**stage_trainer_arguments(config, s), **objective)


def _hidden(data: Any) -> torch.Tensor:
    """The unlabeled pool's hidden labels (int64), or a clear error where there are none."""
    if data.hidden_labels is None:
        raise ConfigError(
            "student.mining='oracle' needs the unlabeled pool's hidden labels, which this "
            "data does not have; use mining='basis' or 'random'"
        )
    return torch.as_tensor(data.hidden_labels).to(torch.int64).cpu()


def train_student(
    data: Any = None,
    pseudo_labels: Any = None,
    config: Config | str | None = None,
    *,
    init: Any = None,
    teacher: Any = None,
    out: str | os.PathLike | None = None,
    callback: Callback | None = None,
    round: int = 1,
    model: Any = None,
) -> Any:
    """The student (Sec 3.3): per step an m-per-class batch of labeled images and an
    m-per-pseudo-class batch of unlabeled images.

    Args:
        data: a :class:`slade.data.SemiSupervisedData`; ``None`` loads ``config.data``.
        pseudo_labels: :class:`PseudoLabels` or a ``(N,)`` tensor, one per unlabeled image.
        config: a :class:`~slade.config.Config` or preset name (``student``, ``model``).
        init: the initialisation shared with the teacher (``config.student.init == "ssl"``):
            the SwAV trainer, a weights file or a state_dict; default ``config.ssl.weights``,
            else the same seeded random initialisation as the teacher.
        teacher: the teacher, whose weights start the student when
            ``config.student.init == "teacher"``.
        out: this stage's folder; resumes or skips as for :func:`train_ssl`.
        callback: ``callback("student_round<round>", step, metrics)`` after each step.
        round: the self-training round (seeds the batches of this round's student).
        model: a ``torch.nn.Module`` of your own (trained in place) or a callable returning
            one, as for :func:`train_teacher` (a factory called with the same seed gives the
            student the teacher's initial weights); the step then runs in Python
            (:class:`slade.TorchStudentTrainer`). With ``student.init = "teacher"`` the
            teacher (trained on the same kind of module) gives its weights.

    Returns:
        The :class:`slade.StudentTrainer` (:class:`slade.TorchStudentTrainer` with
        ``model``); ``.history`` holds the per-step metrics.
    """
    config = as_config(config)
    data = data_or_load(data, config)
    pseudo, k = _pseudo_labels(pseudo_labels, len(data.unlabeled))
    trainer = _student_trainer(config, data.num_labeled_classes, k, model)
    files = _student_files(trainer, config, out, init, teacher)
    batches, step = _batches(trainer, data, pseudo, config, round), _step(trainer)
    stage = student_id(round)
    return train_loop(stage, trainer, files, config.student.steps, batches, step, config, callback)


def _pseudo_labels(pseudo_labels: Any, count: int) -> tuple[torch.Tensor, int]:
    """The pseudo labels as an int64 CPU tensor of ``count`` labels, and their k."""
    if pseudo_labels is None:
        raise InvalidArgumentError("train_student needs pseudo_labels (see slade.pseudo_label)")
    pseudo = pseudo_labels.labels if isinstance(pseudo_labels, PseudoLabels) else pseudo_labels
    pseudo = torch.as_tensor(pseudo).to(torch.int64).cpu()
    if pseudo.shape != (count,):
        raise InvalidArgumentError(
            f"pseudo_labels must hold one label per unlabeled image ({count}), "
            f"got shape {tuple(pseudo.shape)}"
        )
    k = int(pseudo.max()) + 1 if pseudo.numel() else 1
    if isinstance(pseudo_labels, PseudoLabels):
        k = pseudo_labels.k
    return pseudo, k


def _student_files(trainer: Any, config: Config, out: Any, init: Any, teacher: Any) -> StageFiles:
    """The stage's files; a fresh student starts from the teacher (``student.init =
    "teacher"``) or from the teacher's initialisation."""
    if config.student.init != "teacher":
        return stage_files(trainer, out, init if init is not None else config.ssl.weights)
    if teacher is None:
        raise InvalidArgumentError("student.init='teacher' needs the teacher (teacher=...)")
    return stage_files(trainer, out, as_model(teacher, config.device), whole_model=True)


def _batches(trainer: Any, data: Any, pseudo: torch.Tensor, config: Config, round: int) -> Any:
    """``batches(start)``: pairs of (labeled, unlabeled) batches from step ``start`` on."""
    from ..data import MPerClassSampler

    s = config.student
    labels = data.labeled.labels
    labeled = training_images(data.labeled, config.data.augment, config.data.num_workers)
    unlabeled = training_images(data.unlabeled, config.data.augment, config.data.num_workers)
    seed_l = derive_seed(config.seed, STAGE_CODES["student_labeled"], round)
    seed_u = derive_seed(config.seed, STAGE_CODES["student_unlabeled"], round)
    sampler_l = MPerClassSampler(labels, s.labeled_m, s.labeled_batch_size, seed=seed_l % 2**32)
    sampler_u = MPerClassSampler(pseudo, s.unlabeled_m, s.unlabeled_batch_size, seed=seed_u % 2**32)
    # Oracle mining reads the pool's hidden labels: they ride along as a second column.
    pool_labels = pseudo if s.mining != "oracle" else torch.stack([pseudo, _hidden(data)], 1)

    def batches(start: int) -> Iterator[Any]:
        device = trainer.device
        return zip(
            StepBatches(labeled, sampler_l, labels, seed_l, start, device),
            StepBatches(unlabeled, sampler_u, pool_labels, seed_u, start, device),
        )

    return batches


def _step(trainer: Any) -> Any:
    """``step(batch)``: one student step; oracle batches carry the hidden labels too."""

    def step(batch: Any) -> Mapping[str, float]:
        (images_l, labels_l), (images_u, labels_u) = batch
        if labels_u.dim() == 2:
            return trainer.step(images_l, labels_l, images_u, labels_u[:, 0], labels_u[:, 1])
        return trainer.step(images_l, labels_l, images_u, labels_u)

    return step
