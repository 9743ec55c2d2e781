"""The SLADE pipeline, step by step or as a whole (Duan et al. 2021; DESIGN.md §2).

Each step can be used alone and resumes from its own files when given an ``out`` folder:

- :func:`train_ssl`: SwAV fine-tuning of the backbone on labeled + unlabeled images (Sec 3.1).
- :func:`train_teacher`: ranking loss on the labeled images (Sec 3.1).
- :func:`pseudo_label`: k-means of the teacher's embeddings of the unlabeled images
  (Sec 3.2). Called with a tensor of embeddings instead of a model it is
  :func:`slade.cluster.cluster_labels`.
- :func:`train_student`: labels + pseudo labels + feature basis (Sec 3.3).
- :func:`evaluate`: MAP@R, R-Precision, P@1, Recall@K and NMI on the test (or validation)
  split (Musgrave et al. 2020).
- :func:`run`: all of them from a :class:`~slade.config.Config`, with self-training rounds
  (the student of a round is the teacher of the next), checkpoints, results and plots.

A training step's batch and augmentation derive from (seed, stage, step), checkpoints are
written atomically every ``checkpoint_every`` steps (and on Ctrl-C), so a run resumed after
an interruption ends with the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from . import _core, cluster, train
from ._images import (
    STAGE_CODES,
    TensorImages,
    TransformImages,
    StepBatches,
    as_image_dataset,
    derive_seed,
    embed_dataset,
    training_images,
)
from .config import Config, preset, stage_optimizer
from .errors import ConfigError, DtypeError, InvalidArgumentError, MissingFileError
from .nn import CoreModule, EmbeddingModel, load_torchvision_weights

__all__ = [
    "load_data",
    "train_ssl",
    "train_teacher",
    "pseudo_label",
    "PseudoLabels",
    "train_student",
    "evaluate",
    "load_trainer",
    "run",
    "RunResult",
    "results_table",
]

#: ``callback(stage, step, metrics)`` after every training step; raising stops the run
#: (KeyboardInterrupt first saves a checkpoint).
Callback = Callable[[str, int, Mapping[str, float]], None]

#: Protocols whose labeled classes come in groups that ``data.val_groups`` holds out whole.
GROUPED_PROTOCOLS = ("omniglot-ssl",)

TABLE_METRICS = (
    ("MAP@R", "map_at_r"),
    ("RP", "r_precision"),
    ("P@1", "precision_at_1"),
    ("R@1", "recall_at_1"),
    ("NMI", "nmi"),
)


# --------------------------------------------------------------------------- inputs


def _config(config: Config | str | None) -> Config:
    if config is None:
        return Config().validate()
    if isinstance(config, str):
        return preset(config)
    if isinstance(config, Config):
        return config.validate()
    if isinstance(config, Mapping):
        return Config.from_dict(config).validate()
    raise DtypeError(
        f"config must be a slade Config, a preset name or a dict, got {type(config).__name__}"
    )


def load_data(config: Config | str | None = None) -> Any:
    """The :class:`slade.data.SemiSupervisedData` a config's ``data`` section describes,
    with the grayscale training shift of ``data.shift`` and the ``max_*`` subsets."""
    from . import data as data_module
    from .data import transforms as presets

    config = _config(config)
    d = config.data
    options = dict(d.protocol_options)
    if d.val_classes:
        options["val_classes"] = (
            int(d.val_classes) if float(d.val_classes).is_integer() else d.val_classes
        )
        options.setdefault("seed", config.seed)
    if d.val_groups:
        if d.protocol not in GROUPED_PROTOCOLS:
            raise ConfigError(
                f"data.val_groups: protocol {d.protocol!r} has no class groups; it applies to "
                f"{', '.join(GROUPED_PROTOCOLS)} (use data.val_classes)"
            )
        options["val_groups"] = d.val_groups
        options.setdefault("seed", config.seed)
    grayscale = (
        d.protocol in ("fashion-mnist-ssl", "omniglot-ssl") or options.get("style") == "grayscale"
    )
    if grayscale and "train_transform" not in options:
        options["train_transform"] = presets.train_transform("grayscale", shift=d.shift)
    if d.protocol == "omniglot-ssl":
        options.setdefault("image_size", d.image_size)
    if d.protocol in ("fashion-mnist-ssl", "omniglot-ssl"):
        args: tuple = (d.root,)
    elif d.protocol == "folders":
        args = (
            _required(d.root, "data.root", "the folder holding labeled/, unlabeled/ and test/"),
        )
    else:
        pools = {
            "cub-nabirds": ("the CUB_200_2011 folder", "the NABirds folder"),
            "cars-compcars": ("the Cars-196 folder", "the CompCars folder"),
            "inshop-fashion200k": ("the In-shop folder", "the Fashion200k folder"),
        }[d.protocol]
        args = (
            _required(d.root, "data.root", pools[0]),
            _required(d.pool_root, "data.pool_root", pools[1]),
        )
    try:
        data = data_module.load_protocol(d.protocol, *args, **options)
    except TypeError as err:
        raise ConfigError(f"data.protocol_options do not fit {d.protocol}: {err}") from None
    if d.val_in_pool:
        data = data_module.with_val_in_pool(
            data, d.val_in_pool, derive_seed(config.seed, STAGE_CODES["val_in_pool"])
        )
    return _subsampled(data, d, config.seed)


def _required(value: Any, key: str, what: str) -> Any:
    if value is None:
        raise ConfigError(f"{key} is required by this protocol: {what} (e.g. --data PATH)")
    return value


def _subsampled(data: Any, d: Any, seed: int) -> Any:
    def pick(dataset: Any, limit: int | None, code: int) -> np.ndarray | None:
        if limit is None or dataset is None or len(dataset) <= limit:
            return None
        rng = np.random.default_rng(derive_seed(seed, STAGE_CODES["subset"], code))
        return np.sort(rng.choice(len(dataset), size=limit, replace=False))

    changes = {}
    rows = pick(data.labeled, d.max_labeled, 0)
    if rows is not None:
        changes["labeled"] = data.labeled.subset(rows)
    rows = pick(data.unlabeled, d.max_unlabeled, 1)
    if rows is not None:
        changes["unlabeled"] = data.unlabeled.subset(rows)
    rows = pick(data.test, d.max_test, 2)
    if rows is not None:
        changes["test"] = data.test.subset(rows, relabel=False)
    return dataclasses.replace(data, **changes) if changes else data


def _data(data: Any, config: Config) -> Any:
    return load_data(config) if data is None else data


def _optimizer(section: Any) -> train.OptimizerConfig:
    """The section's optimizer; a cosine schedule without ``total_steps`` spans the stage."""
    return stage_optimizer(section)


# --------------------------------------------------------------------------- models


def load_trainer(path: str | os.PathLike, *, device: Any = "cpu") -> Any:
    """The trainer a checkpoint (``.safetensors`` written by ``save``) was saved from."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no such checkpoint: {path}")
    kind = _core.read_checkpoint_info(os.fspath(path))[0]
    classes = {"swav": "SwavTrainer", "teacher": "TeacherTrainer", "student": "StudentTrainer"}
    cls = getattr(train, classes.get(kind, ""), None)
    if cls is None:
        raise ConfigError(f"{path} is a {kind!r} checkpoint, which slade cannot load here")
    return cls.from_checkpoint(path, device=device)


def _model(source: Any, device: Any = "cpu") -> Any:
    if isinstance(source, CoreModule):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load_trainer(source, device=device)
    raise DtypeError(
        "expected a slade trainer or model (e.g. from train_teacher) or a checkpoint path, "
        f"got {type(source).__name__}"
    )


def _initialise(trainer: Any, source: Any, *, whole_model: bool = False) -> None:
    """Loads initial weights: ``None`` keeps the seeded random initialisation; a file or a
    state_dict is read as torchvision-style backbone weights; a slade model or trainer gives
    its backbone (and, with ``whole_model``, its embedding head too)."""
    if source is None:
        return
    if isinstance(source, CoreModule):
        if whole_model:
            trainer.load_model(source)
            return
        model_state = getattr(source, "model_state_dict", source.state_dict)
        source = model_state()
    load_torchvision_weights(trainer, source, ignore_prefixes=("fc.", "prototypes"))


# --------------------------------------------------------------------------- stage files


class _StageFiles:
    """A stage's folder: ``checkpoint.safetensors`` (latest, while running),
    ``final.safetensors`` (when finished) and ``history.json`` (per-step metrics)."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def path(self, name: str) -> Path | None:
        return self.folder / name if self.folder is not None else None

    @property
    def final(self) -> Path | None:
        return self.path("final.safetensors")

    @property
    def checkpoint(self) -> Path | None:
        return self.path("checkpoint.safetensors")

    def finished(self) -> bool:
        return self.final is not None and self.final.exists()

    def resumable(self) -> bool:
        return self.checkpoint is not None and self.checkpoint.exists()

    def history(self, upto: int) -> list[dict]:
        path = self.path("history.json")
        if path is None or not path.exists():
            return []
        return [r for r in json.loads(path.read_text()) if r["step"] <= upto]

    def save(self, trainer: Any, history: list[dict], *, final: bool) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        # History first: it then always reaches at least the checkpoint's step.
        write_json(self.path("history.json"), history)
        trainer.save(self.final if final else self.checkpoint)
        if final and self.checkpoint.exists():
            self.checkpoint.unlink()
            sidecar = self.checkpoint.with_suffix(".json")
            if sidecar.exists():
                sidecar.unlink()


def write_json(path: Path, value: Any) -> None:
    """Writes JSON atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1))
    os.replace(temporary, path)


class _Progress:
    """tqdm bars when enabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def bar(self, total: int, initial: int, description: str) -> Any:
        if not self.enabled:
            return None
        from tqdm import tqdm

        return tqdm(
            total=total, initial=initial, desc=description, dynamic_ncols=True, mininterval=0.5
        )

    def iterate(self, iterator: Iterator, total: int, description: str) -> Iterator:
        if not self.enabled:
            return iterator
        from tqdm import tqdm

        return tqdm(
            iterator,
            total=total,
            desc=description,
            dynamic_ncols=True,
            leave=False,
            mininterval=0.5,
        )


def _postfix(metrics: Mapping[str, float]) -> dict[str, str]:
    shown = {"loss": metrics.get("loss")}
    if "pairs/positive" in metrics:
        shown["pos"] = metrics["pairs/positive"]
        shown["neg"] = metrics.get("pairs/negative")
    return {k: f"{v:.4g}" for k, v in shown.items() if v is not None}


def _train_loop(
    stage: str,
    trainer: Any,
    files: _StageFiles,
    steps: int,
    batches: Callable[[int], Iterator[Any]],
    step: Callable[[Any], Mapping[str, float]],
    config: Config,
    callback: Callback | None,
) -> Any:
    """Steps ``trainer.step_count + 1 .. steps`` with checkpoints every
    ``config.checkpoint_every`` steps; returns the trainer with its ``history`` (per-step
    metrics, also of the steps before a resume)."""
    start = trainer.step_count
    trainer.history = history = files.history(start)
    if start >= steps and files.finished():
        return trainer
    checkpoint_every = config.checkpoint_every
    bar = _Progress(config.progress).bar(steps, min(start, steps), stage)
    try:
        if start < steps:
            source = batches(start)
            for number in range(start + 1, steps + 1):
                metrics = dict(step(next(source)))
                history.append({**{k: float(v) for k, v in metrics.items()}, "step": number})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(_postfix(metrics), refresh=False)
                if number % checkpoint_every == 0 and number < steps:
                    files.save(trainer, history, final=False)
                if callback is not None:
                    callback(stage, number, metrics)
    except KeyboardInterrupt:
        files.save(trainer, history, final=False)
        raise
    finally:
        if bar is not None:
            bar.close()
    files.save(trainer, history, final=True)
    return trainer


def _stage_files(trainer: Any, out: Any, init: Any, *, whole_model: bool = False) -> _StageFiles:
    """The stage's files, with the trainer restored from them or else initialised."""
    files = _StageFiles(out)
    if not _resume(trainer, files):
        _initialise(trainer, init, whole_model=whole_model)
    return files


def _resume(trainer: Any, files: _StageFiles) -> bool:
    """Loads the stage's final or latest checkpoint; True when the trainer was restored."""
    if files.finished():
        trainer.load(files.final)
        return True
    if files.resumable():
        trainer.load(files.checkpoint)
        return True
    return False


# --------------------------------------------------------------------------- stages


def train_ssl(
    data: Any = None,
    config: Config | str | None = None,
    *,
    init: Any = None,
    out: str | os.PathLike | None = None,
    callback: Callback | None = None,
) -> Any:
    """Self-supervised fine-tuning with SwAV on labeled + unlabeled images (Sec 3.1).

    Args:
        data: a :class:`slade.data.SemiSupervisedData`; ``None`` loads ``config.data``.
        config: a :class:`~slade.config.Config` or preset name (``ssl``, ``model``, run fields).
        init: starting backbone weights (a file, a state_dict or a slade model); default
            ``config.ssl.weights``, else the seeded random initialisation.
        out: this stage's folder (checkpoints, ``history.json``); ``None`` saves nothing.
            With files from an earlier call there, the stage resumes or is skipped.

    Returns:
        The :class:`slade.SwavTrainer` (``.history`` holds the per-step metrics).
    """
    config = _config(config)
    data = _data(data, config)
    s = config.ssl
    trainer = train.SwavTrainer(
        config.model,
        _optimizer(s),
        device=config.device,
        num_prototypes=s.num_prototypes,
        temperature=s.temperature,
        epsilon=s.epsilon,
        sinkhorn_iterations=s.sinkhorn_iterations,
        freeze_prototypes_steps=s.freeze_prototypes_steps,
        precision=config.precision,
        seed=config.seed,
    )
    files = _stage_files(trainer, out, init if init is not None else s.weights)
    source = _ssl_images(data, config)
    count = len(source)
    if s.batch_size > count:
        raise ConfigError(f"ssl.batch_size ({s.batch_size}) exceeds the {count} training images")
    from .data import RandomBatchSampler

    seed = derive_seed(config.seed, STAGE_CODES["ssl"])
    device = trainer.device

    def batches(start: int) -> Iterator[Any]:
        sampler = RandomBatchSampler(count, s.batch_size, seed=seed % 2**32)
        return StepBatches(
            source, sampler, torch.zeros(count, dtype=torch.int64), seed, start, device
        )

    return _train_loop(
        "ssl",
        trainer,
        files,
        s.steps,
        batches,
        lambda batch: trainer.step(batch[0]),
        config,
        callback,
    )


def _ssl_images(data: Any, config: Config) -> TensorImages | TransformImages:
    """Labeled and unlabeled images together, as SwAV multi-crops."""
    labeled, unlabeled = as_image_dataset(data.labeled), as_image_dataset(data.unlabeled)
    source_l = training_images(labeled, config.data.augment, 0)
    source_u = training_images(unlabeled, config.data.augment, 0)
    if isinstance(source_l, TensorImages) and isinstance(source_u, TensorImages):
        images = torch.cat([source_l.images, source_u.images])
        return TensorImages(images, 0, n_local=config.ssl.n_local)
    from torch.utils.data import ConcatDataset

    from .data import multi_crop

    style = "grayscale" if config.model.in_channels == 1 else "natural"
    # Grayscale local crops of 16 px (the preset's 14 px is below the ConvNet's minimum).
    local_size = 16 if style == "grayscale" else None
    crops = multi_crop(style, n_local=config.ssl.n_local, local_size=local_size)
    both = ConcatDataset([labeled.with_transform(crops), unlabeled.with_transform(crops)])
    return TransformImages(both, config.data.num_workers)


def _teacher_trainer(config: Config) -> Any:
    t = config.teacher
    return train.TeacherTrainer(
        config.model,
        _optimizer(t),
        ranking=t,
        device=config.device,
        precision=config.precision,
        seed=config.seed,
    )


def train_teacher(
    data: Any = None,
    config: Config | str | None = None,
    *,
    init: Any = None,
    out: str | os.PathLike | None = None,
    callback: Callback | None = None,
) -> Any:
    """The teacher: ranking loss on m-per-class batches of labeled images (Sec 3.1).

    Args:
        data: a :class:`slade.data.SemiSupervisedData`; ``None`` loads ``config.data``.
        config: a :class:`~slade.config.Config` or preset name (``teacher``, ``model``).
        init: initial backbone: the SwAV trainer of :func:`train_ssl`, a weights file or a
            state_dict; default ``config.ssl.weights``, else the seeded random initialisation.
        out: this stage's folder; resumes or skips as for :func:`train_ssl`.
        callback: ``callback("teacher", step, metrics)`` after each step.

    Returns:
        The :class:`slade.TeacherTrainer` (``.history`` holds the per-step metrics).
    """
    config = _config(config)
    data = _data(data, config)
    t = config.teacher
    trainer = _teacher_trainer(config)
    files = _stage_files(trainer, out, init if init is not None else config.ssl.weights)
    from .data import MPerClassSampler

    labels = data.labeled.labels
    source = training_images(data.labeled, config.data.augment, config.data.num_workers)
    seed = derive_seed(config.seed, STAGE_CODES["teacher"])
    sampler = MPerClassSampler(labels, t.m, t.batch_size, seed=seed % 2**32)

    def batches(start: int) -> Iterator[Any]:
        return StepBatches(source, sampler, labels, seed, start, trainer.device)

    return _train_loop(
        "teacher",
        trainer,
        files,
        t.steps,
        batches,
        lambda batch: trainer.step(batch[0], batch[1]),
        config,
        callback,
    )


@dataclass
class PseudoLabels:
    """Pseudo labels of the unlabeled images (Sec 3.2) and how good they are.

    Attributes:
        labels: ``(N,)`` int64 cluster ids in ``[0, k)``, one per unlabeled image.
        k: clusters asked for.
        inertia: k-means objective (sum of squared distances to the centroids).
        sizes: images per cluster.
        quality: against the hidden labels, when the data has them: ``nmi``, ``purity``
            (images in their cluster's majority class / N), ``clusters`` (non-empty) and
            ``classes`` (hidden classes).
    """

    labels: torch.Tensor
    k: int
    inertia: float
    sizes: list[int]
    quality: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "images": int(self.labels.numel()),
            "inertia": self.inertia,
            **self.quality,
        }

    def save(self, folder: str | os.PathLike) -> None:
        """``pseudo_labels.npy`` and ``pseudo_labels.json`` (written last: the done marker)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / "pseudo_labels.tmp.npy"
        np.save(temporary, self.labels.cpu().numpy())
        os.replace(temporary, folder / "pseudo_labels.npy")
        write_json(folder / "pseudo_labels.json", {**self.summary(), "sizes": self.sizes})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PseudoLabels:
        folder = Path(folder)
        info = json.loads((folder / "pseudo_labels.json").read_text())
        labels = torch.from_numpy(np.load(folder / "pseudo_labels.npy"))
        quality = {k: info[k] for k in ("nmi", "purity", "clusters", "classes") if k in info}
        return cls(labels, int(info["k"]), float(info["inertia"]), list(info["sizes"]), quality)


def pseudo_label_quality(pseudo_labels: Any, hidden_labels: Any) -> dict[str, float]:
    """NMI and purity of pseudo labels against the true (hidden) labels."""
    from .plots import cluster_purity

    pseudo = torch.as_tensor(pseudo_labels).cpu()
    hidden = torch.as_tensor(hidden_labels).cpu()
    sizes, purity = cluster_purity(pseudo.numpy(), hidden.numpy())
    return {
        "nmi": float(cluster.nmi(pseudo, hidden)),
        "purity": float((purity * sizes).sum() / max(1, sizes.sum())),
        "clusters": int((sizes > 0).sum()),
        "classes": int(torch.unique(hidden).numel()),
    }


def pseudo_label(
    source: Any,
    data: Any = None,
    k: int | None = None,
    *,
    config: Config | str | None = None,
    out: str | os.PathLike | None = None,
    **kmeans_options: Any,
) -> Any:
    """Pseudo labels by k-means (Sec 3.2), from embeddings or from a model and data.

    - ``pseudo_label(embeddings, k, iters=20, seed=0, init="k-means++", tol=0.0)`` with a
      tensor or array: :func:`slade.cluster.cluster_labels`, returns the ``(N,)`` labels.
    - ``pseudo_label(teacher, data, k=None, config=..., out=...)`` with a trainer, model or
      checkpoint path: embeds ``data.unlabeled`` (a SemiSupervisedData, or any dataset of
      images) with the model, clusters the L2-normalised embeddings into ``k`` clusters
      (default ``config.pseudo_labels.k``; iterations, init, tol and batch size from the same
      section, seeded by the run seed) and returns :class:`PseudoLabels`, with NMI and
      purity against the hidden labels when known. With ``out``, the labels are saved there
      and a later call with the same ``out`` reads them instead of clustering again.
    """
    if isinstance(source, torch.Tensor) or hasattr(source, "__array__"):
        if k is None and isinstance(data, int):
            k = data
        if k is None:
            raise InvalidArgumentError("pseudo_label(embeddings, k): k is required")
        return cluster.cluster_labels(source, k, **kmeans_options)
    config = _config(config)
    p = config.pseudo_labels
    k = p.k if k is None else k
    if out is not None and (Path(out) / "pseudo_labels.json").exists():
        saved = PseudoLabels.load(out)
        if saved.k != k:
            raise ConfigError(
                f"{out} holds pseudo labels for k = {saved.k}, not {k}; use another folder"
            )
        return saved
    data = _data(data, config)
    unlabeled = getattr(data, "unlabeled", data)
    if getattr(data, "eval_transform", None) is not None:
        # the teacher sees the pool as it sees test images: no training augmentation
        unlabeled = unlabeled.with_transform(data.eval_transform)
    model = _model(source, config.device)
    embeddings = embed_dataset(
        model,
        unlabeled,
        batch_size=p.batch_size,
        num_workers=config.data.num_workers,
        progress=_Progress(config.progress).iterate,
        description="embed unlabeled",
    )
    options = {"iters": p.iters, "init": p.init, "tol": p.tol, "seed": config.seed}
    options.update(kmeans_options)
    normalised = torch.nn.functional.normalize(embeddings, dim=1)
    if k > normalised.shape[0]:
        raise ConfigError(
            f"pseudo_labels.k ({k}) exceeds the {normalised.shape[0]} unlabeled images"
        )
    result = cluster.kmeans(normalised.to(model.device), k, **options)
    labels = result.labels.cpu()
    sizes = torch.bincount(labels, minlength=k).tolist()
    hidden = getattr(unlabeled, "hidden_labels", None)
    quality = pseudo_label_quality(labels, hidden) if hidden is not None else {}
    pseudo = PseudoLabels(labels, k, float(result.inertia), sizes, quality)
    if out is not None:
        pseudo.save(out)
    return pseudo


def _student_trainer(config: Config, num_basis: int, k: int) -> Any:
    s = config.student
    if s.num_basis is not None and s.num_basis < num_basis and s.variant != "pseudo_only":
        raise ConfigError(
            f"student.num_basis ({s.num_basis}) must be at least the number of labeled "
            f"classes ({num_basis}): L_CE needs one basis vector per labeled class"
        )
    pseudo_classes = s.num_pseudo_classes if s.num_pseudo_classes is not None else k
    return train.StudentTrainer(
        config.model,
        _optimizer(s),
        objective=s,
        num_basis=s.num_basis if s.num_basis is not None else num_basis,
        num_pseudo_classes=pseudo_classes if s.regularizer != "sd" else None,
        device=config.device,
        precision=config.precision,
        seed=config.seed,
    )


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
        round: the self-training round (seeds the batches of this round's student).

    Returns:
        The :class:`slade.StudentTrainer` (``.history`` holds the per-step metrics).
    """
    config = _config(config)
    data = _data(data, config)
    s = config.student
    if pseudo_labels is None:
        raise InvalidArgumentError("train_student needs pseudo_labels (see slade.pseudo_label)")
    pseudo = pseudo_labels.labels if isinstance(pseudo_labels, PseudoLabels) else pseudo_labels
    pseudo = torch.as_tensor(pseudo).to(torch.int64).cpu()
    if pseudo.shape != (len(data.unlabeled),):
        raise InvalidArgumentError(
            f"pseudo_labels must hold one label per unlabeled image ({len(data.unlabeled)}), "
            f"got shape {tuple(pseudo.shape)}"
        )
    k = int(pseudo.max()) + 1 if pseudo.numel() else 1
    if isinstance(pseudo_labels, PseudoLabels):
        k = pseudo_labels.k
    trainer = _student_trainer(config, data.num_labeled_classes, k)
    if s.init == "teacher":
        if teacher is None:
            raise InvalidArgumentError("student.init='teacher' needs the teacher (teacher=...)")
        files = _stage_files(trainer, out, _model(teacher, config.device), whole_model=True)
    else:
        files = _stage_files(trainer, out, init if init is not None else config.ssl.weights)
    from .data import MPerClassSampler

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

    def step(batch: Any) -> Mapping[str, float]:
        (images_l, labels_l), (images_u, labels_u) = batch
        if labels_u.dim() == 2:
            return trainer.step(images_l, labels_l, images_u, labels_u[:, 0], labels_u[:, 1])
        return trainer.step(images_l, labels_l, images_u, labels_u)

    return _train_loop(
        "student" if round == 1 else f"student (round {round})",
        trainer,
        files,
        s.steps,
        batches,
        step,
        config,
        callback,
    )


def diagnose(
    student: Any,
    data: Any,
    pseudo_labels: Any,
    config: Config | str | None = None,
    *,
    true_labels: Any = None,
    num_batches: int = 50,
) -> dict[str, Any]:
    """Whether the student's basis and mining filter noise on this pool
    (:mod:`slade.diagnostics`): the pool embedded by ``student``, batches drawn as training
    draws them, pairs judged by ``true_labels`` (default: the pool's hidden labels). Also
    the gradient norm of each loss term at the embeddings of one training-like batch.

    Returns ``{"pairs": {...}, "gradient_norms": {...}, "thresholds": [T1, T2]}``, or an
    empty dict when no true labels are known.
    """
    from . import diagnostics

    config = _config(config)
    data = _data(data, config)
    truth = data.hidden_labels if true_labels is None else true_labels
    if truth is None:
        return {}
    s = config.student
    pseudo = pseudo_labels.labels if isinstance(pseudo_labels, PseudoLabels) else pseudo_labels
    pool = data.unlabeled.with_transform(data.eval_transform) if data.eval_transform else data.unlabeled
    model = _model(student, config.device)
    pseudo = torch.as_tensor(pseudo)
    # only the images of the batches drawn below are embedded
    drawn = diagnostics.training_batches(pseudo, s.unlabeled_batch_size, s.unlabeled_m, num_batches, config.seed)
    rows = torch.unique(torch.cat(list(drawn)))
    emb_drawn = embed_dataset(
        model, pool.subset(rows.numpy()), batch_size=config.pseudo_labels.batch_size,
        num_workers=config.data.num_workers, progress=_Progress(False).iterate,
    )
    emb_u = torch.zeros(len(pool), emb_drawn.shape[1])
    emb_u[rows] = emb_drawn
    basis = diagnostics.basis_of(student) if hasattr(student, "basis") else None
    thresholds: list[float | None] = [None, None]
    if basis is not None:
        rules = student.threshold_rules()
        stats = student.basis_statistics
        thresholds = [diagnostics.threshold_value(rules[i], stats, i) for i in (0, 1)]
    pairs = diagnostics.pair_diagnostics(
        emb_u, pseudo, truth, basis=basis, t1=thresholds[0], t2=thresholds[1],
        require_pseudo_agreement=s.require_pseudo_agreement, neg_margin=s.neg_margin,
        batch_size=s.unlabeled_batch_size, m=s.unlabeled_m, num_batches=num_batches,
        seed=config.seed,
    )
    labeled = data.labeled.with_transform(data.eval_transform) if data.eval_transform else data.labeled
    rows_l = torch.randperm(len(labeled), generator=torch.Generator().manual_seed(config.seed))
    rows_l = rows_l[: s.labeled_batch_size]
    emb_l = embed_dataset(
        model, labeled.subset(rows_l.numpy(), relabel=False), batch_size=len(rows_l),
        num_workers=config.data.num_workers, progress=_Progress(False).iterate,
    )
    labels_l = data.labeled.labels[rows_l]
    batch_u = next(diagnostics.training_batches(pseudo, s.unlabeled_batch_size, s.unlabeled_m, 1, config.seed))
    norms = diagnostics.gradient_norms(
        emb_l, labels_l, emb_u[batch_u], pseudo[batch_u], basis=basis,
        pos_margin=s.pos_margin, neg_margin=s.neg_margin,
    )
    return {"pairs": pairs, "gradient_norms": norms, "thresholds": thresholds}


# --------------------------------------------------------------------------- evaluation


def _evaluation_sets(data: Any, split: str) -> tuple[Any, Any]:
    """(queries, gallery or None) of the split."""
    if split == "val":
        if getattr(data, "val", None) is None:
            raise ConfigError("this data has no validation split: set data.val_classes > 0")
        return data.val, None
    if split != "test":
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    if hasattr(data, "test"):
        return data.test, getattr(data, "gallery", None)
    return data, None


def _embed_split(model: Any, data: Any, config: Config, split: str) -> dict[str, torch.Tensor]:
    queries, gallery = _evaluation_sets(data, split)
    progress = _Progress(config.progress).iterate
    options = {
        "batch_size": config.eval.batch_size,
        "num_workers": config.data.num_workers,
        "progress": progress,
    }
    view = {
        "query": embed_dataset(model, queries, description=f"embed {split}", **options),
        "query_labels": queries.labels,
    }
    if gallery is not None:
        view["reference"] = embed_dataset(model, gallery, description="embed gallery", **options)
        view["reference_labels"] = gallery.labels
    return view


def _metrics(view: Mapping[str, torch.Tensor], config: Config, device: Any) -> dict[str, float]:
    """Retrieval metrics, computed on ``device`` (the model's)."""
    from .retrieval import retrieval_metrics

    def on_device(key: str) -> torch.Tensor | None:
        value = view.get(key)
        return value.to(device) if value is not None else None

    return retrieval_metrics(
        on_device("query"),
        on_device("query_labels"),
        on_device("reference"),
        on_device("reference_labels"),
        recall_at=list(config.eval.recall_at),
        nmi=config.eval.nmi,
    )


def evaluate(
    model: Any,
    data: Any = None,
    *,
    config: Config | str | None = None,
    split: str | None = None,
) -> dict[str, float]:
    """Retrieval metrics of a model on the test (or validation) split.

    Args:
        model: a trainer or :class:`slade.EmbeddingModel`, or a checkpoint path.
        data: a :class:`slade.data.SemiSupervisedData` (its ``test`` images, against its
            ``gallery`` when it has one) or a labeled dataset; ``None`` loads ``config.data``.
        config: batch size, Recall@K, NMI (``eval``) and the data section.
        split: ``"test"`` or ``"val"``; default ``config.data.evaluate_on``.

    Returns:
        ``{"map_at_r", "r_precision", "precision_at_1", "recall_at_1", ..., "nmi"}``
        (see :func:`slade.retrieval_metrics`).
    """
    config = _config(config)
    model = _model(model, config.device)
    data = _data(data, config)
    view = _embed_split(model, data, config, split or config.data.evaluate_on)
    return _metrics(view, config, model.device)


# --------------------------------------------------------------------------- the whole run


@dataclass
class RunResult:
    """What :func:`run` produced.

    Attributes:
        teacher, student: metrics of the first teacher and of the last student.
        pseudo_labels: per round, the pseudo labels' summary (k, NMI, purity, ...).
        rounds: per round, ``{"teacher": metrics, "pseudo_labels": ..., "student": metrics,
            "diagnostics": ...}`` (:func:`diagnose`; empty without the pool's hidden labels).
        config: the configuration.
        out: the output folder (None when nothing was saved).
        seconds: wall time of each stage run in this call.
        trainers: the trained trainers by stage name (``"teacher"``, ``"student"``,
            ``"student_round2"``, ...; ``"ssl"`` when used).
        split: the split the metrics are on.
    """

    teacher: dict[str, float]
    student: dict[str, float]
    pseudo_labels: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    config: Config
    out: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    trainers: dict[str, Any] = field(default_factory=dict, repr=False)
    split: str = "test"

    def table(self) -> str:
        """Teacher vs student (and later rounds' students), then the pseudo labels."""
        rows = [("teacher", self.teacher)]
        for number, entry in enumerate(self.rounds, start=1):
            rows.append(
                (
                    "student" if len(self.rounds) == 1 else f"student (round {number})",
                    entry["student"],
                )
            )
        return results_table(rows, self.pseudo_labels, split=self.split)

    def to_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher,
            "student": self.student,
            "pseudo_labels": self.pseudo_labels,
            "rounds": self.rounds,
            "split": self.split,
            "seconds": self.seconds,
            "config": self.config.to_dict(),
        }

    def __str__(self) -> str:
        return self.table()


def results_table(
    rows: list[tuple[str, Mapping[str, float]]],
    pseudo_labels: list[Mapping[str, Any]] = (),
    *,
    split: str = "test",
) -> str:
    """A plain-text table of retrieval metrics (in %), one row per model."""
    present = [(title, key) for title, key in TABLE_METRICS if any(key in m for _, m in rows)]
    width = max([len(name) for name, _ in rows] + [7])
    lines = [f"{'(' + split + ')':<{width}}  " + "  ".join(f"{title:>6}" for title, _ in present)]
    for name, metrics in rows:
        cells = [
            f"{100 * metrics[key]:6.2f}" if key in metrics else f"{'-':>6}" for _, key in present
        ]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    for number, summary in enumerate(pseudo_labels, start=1):
        text = f"pseudo labels (round {number}): k = {summary['k']}, {summary['images']} images"
        if "nmi" in summary:
            text += (
                f"; vs hidden labels: NMI {100 * summary['nmi']:.2f}, purity "
                f"{100 * summary['purity']:.2f}, {summary['clusters']} clusters for "
                f"{summary['classes']} classes"
            )
        lines.append(text)
    return "\n".join(lines)


_RUN_ENTRIES = ("config.json", "results.json", "ssl", "teacher", "plots")


def _check_out(out: Path, config: Config, overwrite: bool) -> None:
    """Refuses an output folder holding a run of another configuration."""
    saved = out / "config.json"
    if saved.exists() and not overwrite:
        previous = Config.from_dict(json.loads(saved.read_text()))
        differences = _differences(previous.semantic_dict(), config.semantic_dict())
        if differences:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in differences[:5])
            raise ConfigError(
                f"{out} holds a run with another configuration ({shown}); "
                "choose another output folder or overwrite it (overwrite=True, --overwrite)"
            )


def _prepare_out(out: Path, config: Config, overwrite: bool) -> None:
    """Clears an earlier run when overwriting, then records the configuration."""
    if overwrite:
        for name in _RUN_ENTRIES:
            _remove(out / name)
        for entry in out.glob("round*") if out.exists() else []:
            if entry.is_dir() and entry.name[5:].isdigit():
                _remove(entry)
    write_json(out / "config.json", config.to_dict())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            found += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return found
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def _stage_metrics(
    model: Any, data: Any, config: Config, folder: Path | None, split: str
) -> tuple[dict, dict | None]:
    """Metrics of a stage's model, cached in ``metrics.json``; also the embeddings when
    they were computed here."""
    cached = folder / f"metrics_{split}.json" if folder is not None else None
    if cached is not None and cached.exists():
        return json.loads(cached.read_text()), None
    view = _embed_split(model, data, config, split)
    metrics = _metrics(view, config, model.device)
    if cached is not None:
        write_json(cached, metrics)
    return metrics, view


def run(
    config: Config | str | None = None,
    *,
    data: Any = None,
    overrides: Any = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    callback: Callback | None = None,
) -> RunResult:
    """The whole method: [SSL] -> teacher -> (pseudo labels -> student) x rounds -> report.

    Args:
        config: a :class:`~slade.config.Config` or a preset name.
        data: the data to use instead of loading ``config.data``.
        overrides: ``["key=value", ...]`` or ``{"key": value}`` applied to the config.
        out: output folder (default ``config.out``; ``None`` saves nothing). It receives
            ``config.json``, one folder per stage (``ssl/``, ``teacher/``,
            ``round<r>/pseudo_labels.*``, ``round<r>/student/``) with checkpoints, histories
            and cached metrics, ``results.json`` and ``plots/*.png``. A folder holding an
            interrupted run with the same configuration is resumed: finished stages are
            skipped and the interrupted one continues from its latest checkpoint.
        overwrite: delete an earlier run's files in ``out`` first.
        callback: ``callback(stage, step, metrics)`` after every training step.

    Returns:
        A :class:`RunResult`; ``print(result.table())`` shows teacher vs student.
    """
    if isinstance(config, str):
        config = preset(config)
    config = (config.copy() if isinstance(config, Config) else _config(config)).override(overrides)
    if out is not None:
        config.out = os.fspath(out)
    config.validate()
    folder = Path(config.out) if config.out is not None else None
    if folder is not None:
        _check_out(folder, config, overwrite)
    data = _data(data, config)
    if folder is not None:
        _prepare_out(folder, config, overwrite)
    split = config.data.evaluate_on
    seconds: dict[str, float] = {}
    trainers: dict[str, Any] = {}

    def sub(*parts: str) -> Path | None:
        return folder.joinpath(*parts) if folder is not None else None

    def timed(name: str, action: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        value = action()
        seconds[name] = round(time.perf_counter() - began, 2)
        return value

    init = None
    if config.ssl.enabled:
        init = timed("ssl", lambda: train_ssl(data, config, out=sub("ssl"), callback=callback))
        trainers["ssl"] = init
    teacher = timed(
        "teacher",
        lambda: train_teacher(data, config, init=init, out=sub("teacher"), callback=callback),
    )
    trainers["teacher"] = teacher
    teacher_metrics, teacher_view = timed(
        "evaluate teacher", lambda: _stage_metrics(teacher, data, config, sub("teacher"), split)
    )
    rounds: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    views = {"teacher": teacher_view}
    current_teacher, current_metrics = teacher, teacher_metrics
    pseudo_by_round = []
    for number in range(1, config.rounds + 1):
        name = "student" if number == 1 else f"student_round{number}"
        pseudo = timed(
            f"pseudo labels {number}",
            lambda: pseudo_label(current_teacher, data, config=config, out=sub(f"round{number}")),
        )
        pseudo_by_round.append(pseudo)
        student = timed(
            name,
            lambda: train_student(
                data,
                pseudo,
                config,
                init=init,
                teacher=current_teacher,
                out=sub(f"round{number}", "student"),
                callback=callback,
                round=number,
            ),
        )
        trainers[name] = student
        student_metrics, views[name] = timed(
            f"evaluate {name}",
            lambda: _stage_metrics(student, data, config, sub(f"round{number}", "student"), split),
        )
        summaries.append(pseudo.summary())
        rounds.append(
            {
                "teacher": current_metrics,
                "pseudo_labels": pseudo.summary(),
                "student": student_metrics,
                "diagnostics": timed(
                    f"diagnose {name}", lambda: diagnose(student, data, pseudo, config)
                ),
            }
        )
        current_teacher, current_metrics = student, student_metrics
    result = RunResult(
        teacher=teacher_metrics,
        student=rounds[-1]["student"],
        pseudo_labels=summaries,
        rounds=rounds,
        config=config,
        out=folder,
        seconds=seconds,
        trainers=trainers,
        split=split,
    )
    if folder is not None:
        if config.eval.plots:
            timed("plots", lambda: _plots(result, data, views, pseudo_by_round, folder / "plots"))
        write_json(folder / "results.json", result.to_dict())
    return result


def _plots(
    result: RunResult, data: Any, views: dict[str, Any], pseudo: list[PseudoLabels], folder: Path
) -> None:
    from . import plots

    config = result.config
    histories = {name: getattr(trainer, "history", []) for name, trainer in result.trainers.items()}
    plots.training_curves(histories, folder / "training_curves.png")
    diagnosed = {
        f"round {number}": entry["diagnostics"]
        for number, entry in enumerate(result.rounds, start=1)
        if entry.get("diagnostics")
    }
    if diagnosed:
        plots.mining_diagnostics(diagnosed, folder / "mining_diagnostics.png")
    queries, gallery = _evaluation_sets(data, result.split)
    final = "student" if len(result.rounds) == 1 else f"student_round{len(result.rounds)}"
    shown = {}
    for name in ("teacher", final):
        view = views.get(name)
        if view is None:
            view = _embed_split(result.trainers[name], data, config, result.split)
        shown[name] = view
    count = min(config.eval.examples, len(queries))
    if count:
        rng = np.random.default_rng(config.seed)
        chosen = sorted(rng.choice(len(queries), size=count, replace=False).tolist())
        plots.retrieval_examples(
            shown,
            chosen,
            folder / "retrieval_examples.png",
            query_image=lambda i: plots.image_array(queries, i),
            reference_image=(
                (lambda i: plots.image_array(gallery, i)) if gallery is not None else None
            ),
            top_k=min(config.eval.top_k, len(queries) - 1 if gallery is None else len(gallery)),
        )
    hidden = getattr(data.unlabeled, "hidden_labels", None)
    if hidden is not None:
        for number, labels in enumerate(pseudo, start=1):
            suffix = "" if len(pseudo) == 1 else f"_round{number}"
            plots.pseudo_label_purity(
                labels.labels,
                hidden,
                folder / f"pseudo_label_purity{suffix}.png",
                title=f"pseudo labels, k = {labels.k}",
            )
