"""The teacher, student and SwAV steps on a user's ``torch.nn.Module``, run in Python around
the Rust objectives (:mod:`slade.objectives`), with the interface of the Rust trainers
(:mod:`slade.train`) that the pipeline uses: ``step``, ``step_count``, ``device``,
``embed``, ``save`` / ``load`` / ``from_checkpoint``, ``state_dict``,
``model_state_dict``, ``load_model``, ``load_backbone``, ``optimizer_state``,
``learning_rates``, ``history`` and ``to_torch``.

A step is what the Rust step is: forward (training mode), the objective, backward, gradient
clipping, the optimizer update and the schedule, with the optimizer groups and rules of the
core's optimizer (:mod:`slade.torch_train.optim`). Ctrl-C during a step is held until the
step is done; a step that fails (a bad batch) leaves the trainer as it was: buffers and the
objective's state are restored, nothing is updated. A step whose images, embeddings, loss or
gradients are NaN or Inf is never applied either: it raises NonFiniteError or, with
``optimizer.nonfinite="skip"``, counts as a skipped step (as the Rust trainers do).

In a process group (:mod:`slade.distributed`, e.g. under ``torchrun``) each rank steps on
its share of the global batch: the objective sees the global batch (embeddings, labels,
pseudo labels all-gathered, gradient flowing to each rank's rows), BatchNorm normalises with
the global batch's statistics (``sync_batchnorm``), gradients are averaged over the ranks in
buckets between backward and the update, and rank 0's initial weights are broadcast; the
ranks then stay equal and give one process's weights for the global batch (to float
rounding). Every step call is collective: each rank must make it, with its share.

Randomness: the factory (when ``model`` is one) and the objective's initial parameters are
drawn with torch's generators seeded with ``seed``; every step then runs with the trainer's
own state of torch's generators (dropout, random mining), saved in checkpoints, so a resumed
run repeats the uninterrupted one whatever else the process draws in between.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

import torch

from .. import _core, distributed
from .._convert import as_tensor, optional_tensor
from ..errors import ConfigError, NonFiniteError, NotSupportedError, ShapeError
from ..nn import device_name
from ..objectives import StudentLoss, SwavLoss, TeacherLoss
from ..settings import OptimizerConfig, RankingConfig, StudentObjectiveConfig, SwavConfig
from . import checkpoint
from .model import (
    HEAD_PREFIX,
    ModelSource,
    TorchModel,
    build_module,
    check_crops,
    check_images,
    load_weights,
    read_weights,
    seeded,
)
from .optim import build_optimizer, clip, learning_rates, schedule

_T = TypeVar("_T", bound="TorchTrainer")


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """Torch's generator states the step uses: the CPU's and, on CUDA, the device's."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _precision(precision: str, device: torch.device) -> str:
    """The precision's canonical name; fp16 autocast and bf16 layers are the Rust trainers'
    only."""
    checked = _core.check_settings("trainer", {"precision": precision})["precision"]
    if checked == "bf16" or (checked == "fp16" and device.type == "cuda"):
        raise NotSupportedError(
            f'precision "{checked}" is not supported by the Python-step trainers (a model of '
            'your own, or slade\'s networks under torchrun): use "fp32", or autocast inside '
            "the model's forward"
        )
    return checked


class TorchTrainer:
    """What the Python-step trainers share; see the module docstring.

    Attributes:
        model: the :class:`~slade.torch_train.model.TorchModel` around the user's module
            (``model.module``).
        objective: the objective module (:class:`slade.TeacherLoss`, ...).
        optimizer: the ``torch.optim`` optimizer; its param groups carry ``name`` and
            ``base_lr``.
        optim_config: the optimizer settings in use, as the core completed them.
        history: per-step metrics, filled by the pipeline.
    """

    _KIND: ClassVar[str]
    #: The optimizer group of the objective's own parameters.
    _OBJECTIVE_GROUP: ClassVar[str] = "head"

    def __init__(
        self,
        model: ModelSource,
        build_objective: Callable[[torch.device], torch.nn.Module],
        optim_config: OptimizerConfig | Mapping | None,
        *,
        device: Any,
        precision: str,
        seed: int,
        dim: int | None,
        sync_batchnorm: bool,
    ) -> None:
        self.device = torch.device(device_name(device))
        self.precision = _precision(precision, self.device)
        self.seed, self.dim = int(seed), dim
        self.sync_batchnorm = bool(sync_batchnorm)
        with seeded(self.seed, self.device):
            module = build_module(model, self.device)
            if self.sync_batchnorm:
                module = distributed.sync_batchnorm(module)
            self.model = TorchModel(module, dim)
            self.objective = build_objective(self.device)
            self._rng = _rng_state(self.device)
        distributed.broadcast_tensors(self.state_dict().values())
        mapping = OptimizerConfig.mapping(optim_config, {}, "optimizer config")
        self.optim_config = OptimizerConfig.from_core(_core.check_settings("optimizer", mapping))
        self._optim_settings = self.optim_config.to_core()
        self._names = self._parameter_names()
        self.optimizer = build_optimizer(self.optim_config, self._groups())
        self._step = 0
        schedule(self.optimizer, self._optim_settings, 0)
        self.history: list[dict] = []

    # ---- parameters and groups

    def _parameter_names(self) -> dict[int, str]:
        """id(parameter) -> its name; model and objective names must not collide."""
        clashes = sorted(set(self.model.module.state_dict()) & set(self.objective.state_dict()))
        if clashes:
            raise ConfigError(
                f"the model has tensors named {clashes}, as the objective's state: rename them"
            )
        return {id(p): n for n, p in self.named_parameters()}

    def _groups(self) -> list[tuple[str, list[tuple[str, torch.nn.Parameter]]]]:
        """backbone (the module's parameters but its head), head (``embedding.*``), then the
        objective's group."""
        groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {"backbone": [], "head": []}
        for name, p in self.model.module.named_parameters():
            groups["head" if name.startswith(HEAD_PREFIX) else "backbone"].append((name, p))
        groups.setdefault(self._OBJECTIVE_GROUP, []).extend(self.objective.named_parameters())
        return list(groups.items())

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The module's parameters, then the objective's (``basis.weight``, ``prototypes``)."""
        yield from self.model.module.named_parameters()
        yield from self.objective.named_parameters()

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return (p for _, p in self.named_parameters())

    def named_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.model.module.named_buffers()
        yield from self.objective.named_buffers()

    def state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """The module's state, then the objective's, detached (sharing memory)."""
        state = OrderedDict(self.model.module.state_dict())
        state.update(self.objective.state_dict())
        return OrderedDict((k, v.detach()) for k, v in state.items())

    def model_state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """The module's parameters and buffers, detached (sharing memory)."""
        return OrderedDict((k, v.detach()) for k, v in self.model.module.state_dict().items())

    # ---- what the pipeline and the Rust trainers' users read

    @property
    def step_count(self) -> int:
        """Optimizer updates done so far."""
        return self._step

    @property
    def learning_rates(self) -> dict[str, float]:
        """The learning rate each group will use at the next update."""
        return learning_rates(self.optimizer)

    def optimizer_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per parameter: ``step`` and ``momentum_buffer`` or ``exp_avg``/``exp_avg_sq``."""
        state: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in self._optimizer_tensors().items():
            name, slot = key.rsplit(".", 1)
            state.setdefault(name, {})[slot] = tensor
        return state

    def embed(self, images: Any, batch_size: int = 256) -> torch.Tensor:
        """Embeddings in evaluation mode without autograd (see :class:`TorchModel`)."""
        return self.model.embed(images, batch_size)

    def to_torch(self) -> torch.nn.Module:
        """A copy of the module in evaluation mode."""
        return self.model.to_torch()

    # ---- weights in

    def load_model(self, source: Any, *, strict: bool = True) -> dict:
        """Copies the whole module's weights from ``source``: another trainer (e.g. the
        teacher, for a student that starts from it; a Rust trainer of a built-in network
        into its torch twin), a module, a state_dict or a weights file. The objective,
        optimizer state and step count are left as they are."""
        return load_weights(self.model.module, read_weights(source), backbone_only=False, strict=strict)

    def load_backbone(
        self,
        weights: Any,
        *,
        strict: bool = True,
        ignore_prefixes: Sequence[str] = ("fc.",),
        strip_prefix: str | None = None,
    ) -> dict:
        """Loads the module's weights but its head (``embedding.*``, left as it is) from a
        state_dict, a file, a module or a trainer (e.g. the SwAV stage's); see
        :func:`~slade.torch_train.model.load_weights`."""
        return load_weights(
            self.model.module,
            read_weights(weights),
            backbone_only=True,
            strict=strict,
            ignore_prefixes=ignore_prefixes,
            strip_prefix=strip_prefix,
        )

    # ---- the step

    def _run(self, images: Mapping[str, torch.Tensor], compute: Callable[[], Any]) -> dict[str, float]:
        """A whole step on ``images`` (the batches :func:`check_images` returned):
        ``compute()`` (forward pass and objective: the loss and its metrics), backward,
        clipping, update, schedule. A step whose images, embeddings, loss or gradients are
        NaN or Inf is never applied: it raises
        NonFiniteError with the trainer as before it or, with ``optimizer.nonfinite="skip"``,
        counts without an update (``skipped`` = 1; the buffers as before it)."""
        with self._step_scope() as undo:
            metrics: dict[str, float] = {"loss": math.nan}
            try:
                self._check_finite(images)
                loss, objective_metrics = compute()
                metrics = {**objective_metrics, "loss": float(loss.detach())}
                self._backward(loss, metrics["loss"])
            except NonFiniteError:
                if self.optim_config.nonfinite != "skip":
                    raise
                undo()
                return self._advance(metrics, skipped=True)
            return self._apply(metrics)

    @contextmanager
    def _step_scope(self) -> Iterator[Callable[[], None]]:
        """Ctrl-C held until the step is done; the trainer's generators; gives the undo of
        what the forward pass changed (buffers, the objective's state; gradients cleared),
        which an error runs too (the generators then as before the step)."""
        from ..pipeline.interrupts import HeldInterrupts

        saved = [(t, t.detach().clone()) for t in self._mutable_tensors()]

        def undo() -> None:
            with torch.no_grad():
                for tensor, value in saved:
                    tensor.copy_(value)
            self.optimizer.zero_grad(set_to_none=False)

        with HeldInterrupts() as interrupts:
            with interrupts.held():
                try:
                    with self._random():
                        yield undo
                except BaseException:
                    undo()
                    raise
            interrupts.raise_pending()

    def _mutable_tensors(self) -> list[torch.Tensor]:
        """What a forward pass or the objective may change before the update: buffers
        (BatchNorm statistics, running statistics, step counts), the objective's
        parameters (SwAV normalises its prototypes)."""
        return [*(t for _, t in self.named_buffers()), *self.objective.parameters()]

    @contextmanager
    def _random(self) -> Iterator[None]:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self._rng["cpu"])
            if "cuda" in self._rng:
                torch.cuda.set_rng_state(self._rng["cuda"], self.device)
            yield
            self._rng = _rng_state(self.device)

    def _not_finite(self, what: str) -> NonFiniteError:
        return NonFiniteError(
            f"{what} in step {self._step + 1}; the parameters were not updated (lower the "
            'learning rate, enable clip_grad_norm, check the batch, or set optimizer.nonfinite="skip" '
            "to skip such steps)"
        )

    def _check_finite(self, images: Mapping[str, torch.Tensor]) -> None:
        """Every rank's images (so that every rank takes the same branch)."""
        bad = [name for name, x in images.items() if not bool(torch.isfinite(x).all())]
        if not distributed.all_ranks(not bad):
            raise self._not_finite((bad[0] if bad else "another rank's images") + " hold NaN or Inf")

    def _backward(self, loss: torch.Tensor, value: float) -> None:
        """Backward of a finite loss into zeroed gradients, which must come out finite."""
        if not math.isfinite(value):
            raise self._not_finite(f"the {self._KIND} loss is {value}")
        self.optimizer.zero_grad(set_to_none=False)
        if loss.requires_grad:
            loss.backward()
        distributed.average_gradients(self.parameters())
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            raise self._not_finite(f"the {self._KIND} gradients are NaN or Inf")

    def _apply(self, metrics: dict[str, float]) -> dict[str, float]:
        """Clipping and the update, then the step counted."""
        norm = clip(self.optimizer, self.optim_config.clip_grad_norm)
        if norm is not None:
            metrics["grad_norm"] = norm
        self.optimizer.step()
        return self._advance(metrics, skipped=False)

    def _advance(self, metrics: dict[str, float], *, skipped: bool) -> dict[str, float]:
        """The step's metrics as the Rust step's (the rates this update used, ``skipped``
        under ``nonfinite="skip"``); the step count and the schedule advance."""
        out = {**metrics, **{f"lr/{name}": lr for name, lr in self.learning_rates.items()}}
        if self.optim_config.nonfinite == "skip":
            out["skipped"] = float(skipped)
        self._step += 1
        schedule(self.optimizer, self._optim_settings, self._step)
        out["step"] = float(self._step)
        return out

    # ---- checkpoints

    def _objective_settings(self) -> dict[str, Any]:
        """The objective's settings as a checkpoint holds them."""
        raise NotImplementedError

    @classmethod
    def _objective_arguments(cls, objective: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments that rebuild the objective a checkpoint holds."""
        raise NotImplementedError

    def _info(self) -> checkpoint.CheckpointInfo:
        settings = {
            "optimizer": self._optim_settings,
            "seed": self.seed,
            "dim": self.dim,
            "precision": self.precision,
        }
        module = type(self.model.module)
        return checkpoint.CheckpointInfo(
            kind=self._KIND,
            step=self._step,
            settings=json.loads(json.dumps(settings)),
            objective=json.loads(json.dumps(self._objective_settings())),
            model=f"{module.__module__}.{module.__qualname__}",
        )

    def _optimizer_tensors(self) -> dict[str, torch.Tensor]:
        """The optimizer state as ``<parameter>.<slot>`` tensors (the very tensors)."""
        out = {}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                for slot, value in self.optimizer.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor):
                        out[f"{self._names[id(p)]}.{slot}"] = value
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Writes module, objective, optimizer state, step count, the step's random state
        and the settings to ``path`` (``.safetensors``) and a JSON file beside it, each
        atomically and durably."""
        tensors = {f"model.{k}": v for k, v in self.model.module.state_dict().items()}
        tensors.update({f"objective.{k}": v for k, v in self.objective.state_dict().items()})
        tensors.update({f"optim.{k}": v for k, v in self._optimizer_tensors().items()})
        tensors.update({f"rng.{k}": v for k, v in self._rng.items()})
        checkpoint.save(path, tensors, self._info())

    def load(self, path: str | os.PathLike) -> None:
        """Restores a checkpoint written by ``save`` with the same settings."""
        info, tensors = checkpoint.read(path)
        self._check_info(info, path)
        parts = checkpoint.sections(tensors)
        try:
            self.model.module.load_state_dict(parts["model"], strict=True)
            self.objective.load_state_dict(parts["objective"], strict=True)
        except RuntimeError as error:
            raise ShapeError(f"{os.fspath(path)} does not match this model: {error}") from error
        self._load_optimizer(parts["optim"], path)
        self._rng = self._loaded_rng(parts["rng"], path)
        self._step = info.step
        self.optimizer.zero_grad(set_to_none=False)
        schedule(self.optimizer, self._optim_settings, self._step)

    def _loaded_rng(self, saved: Mapping[str, torch.Tensor], path: Any) -> dict[str, torch.Tensor]:
        """The step's generator states from a checkpoint; a CPU checkpoint resumed on CUDA
        keeps this trainer's CUDA state."""
        if "cpu" not in saved:
            raise ShapeError(f"{os.fspath(path)} holds no random state (rng.cpu)")
        rng = {"cpu": saved["cpu"]}
        if self.device.type == "cuda":
            rng["cuda"] = saved.get("cuda", self._rng["cuda"])
        return rng

    def _check_info(self, info: checkpoint.CheckpointInfo, path: Any) -> None:
        ours = self._info()
        if info.kind != self._KIND:
            raise ConfigError(f"{os.fspath(path)} is a {info.kind} checkpoint, not a {self._KIND} one")
        theirs = {"settings": info.settings, "objective": info.objective}
        differing = _differing({"settings": ours.settings, "objective": ours.objective}, theirs)
        if differing:
            raise ConfigError(
                f"{os.fspath(path)} was written with other settings: {', '.join(differing)}; "
                "build the trainer from the checkpoint (from_checkpoint) or with the same settings"
            )

    def _load_optimizer(self, named: Mapping[str, torch.Tensor], path: Any) -> None:
        order = [self._names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]
        index = {name: i for i, name in enumerate(order)}
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in named.items():
            name, _, slot = key.rpartition(".")
            if name not in index:
                raise ShapeError(f"{os.fspath(path)} has optimizer state for unknown parameter {name!r}")
            state.setdefault(index[name], {})[slot] = tensor
        saved = self.optimizer.state_dict()
        self.optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})

    @classmethod
    def from_checkpoint(
        cls: type[_T],
        path: str | os.PathLike,
        model: ModelSource,
        *,
        device: Any = "cpu",
        sync_batchnorm: bool = True,
    ) -> _T:
        """A trainer of ``model`` (the module or factory the checkpoint was trained from)
        built with the checkpoint's settings, its state loaded."""
        info = checkpoint.read_info(path)
        if info.kind != cls._KIND:
            raise ConfigError(f"{os.fspath(path)} is a {info.kind} checkpoint, not a {cls._KIND} one")
        s = info.settings
        trainer = cls(
            model,
            s["optimizer"],
            device=device,
            precision=s["precision"],
            seed=s["seed"],
            dim=s["dim"],
            sync_batchnorm=sync_batchnorm,
            **cls._objective_arguments(info.objective),
        )
        trainer.load(path)
        return trainer


def _differing(ours: Any, theirs: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two JSON-like values."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        keys = sorted(set(ours) | set(theirs))
        return [d for k in keys for d in _differing(ours.get(k), theirs.get(k), f"{prefix}{k}.")]
    if ours == theirs:
        return []
    return [f"{prefix.rstrip('.')} (checkpoint {theirs!r}, trainer {ours!r})"]


class TorchTeacherTrainer(TorchTrainer):
    """The SLADE teacher (:class:`slade.TeacherTrainer`'s step) on a module of your own:
    the ranking loss of :class:`slade.TeacherLoss` on its embeddings of a labeled batch.

    Args:
        model: a ``torch.nn.Module`` mapping images to ``(N, dim)`` embeddings (trained in
            place; it must be on ``device``), or a callable returning one (called with
            torch's generators seeded with ``seed``, the result moved to ``device``).
        optim_config: a :class:`slade.OptimizerConfig` or a dict of its fields; groups
            ``backbone`` and ``head`` (parameters named ``embedding.*``).
        device: where the model lives; images must be on it.
        ranking: a :class:`slade.RankingConfig` or a dict; ``**ranking_fields`` override
            single fields.
        precision: ``"fp32"`` (``"fp16"`` is refused on CUDA, ignored on the CPU;
            ``"bf16"`` is refused).
        seed: seeds the factory and the step's random generators.
        dim: the embedding width the model must give (None: not checked).
        sync_batchnorm: in a process group, BatchNorm layers normalise with the global
            batch's statistics (:func:`slade.distributed.sync_batchnorm`); False: each rank's
            own.
    """

    _KIND = "teacher"
    objective: TeacherLoss

    def __init__(
        self,
        model: ModelSource,
        optim_config: OptimizerConfig | Mapping | None = None,
        *,
        device: Any = "cpu",
        ranking: RankingConfig | Mapping | None = None,
        precision: str = "fp32",
        seed: int = 0,
        dim: int | None = None,
        sync_batchnorm: bool = True,
        **ranking_fields: Any,
    ):
        settings = RankingConfig.mapping(ranking, ranking_fields, "ranking")
        super().__init__(
            model,
            lambda device: TeacherLoss(settings),
            optim_config,
            device=device,
            precision=precision,
            seed=seed,
            dim=dim,
            sync_batchnorm=sync_batchnorm,
        )
        self.ranking_config = self.objective.ranking

    def step(self, images: Any, labels: Any) -> dict[str, float]:
        """One training step on ``images`` with integer ``labels``; the metrics of
        :meth:`slade.TeacherTrainer.step`."""
        x = check_images(images, "images", self.device)

        def compute() -> tuple[torch.Tensor, dict[str, float]]:
            self.model.module.train()
            f = self.model.forward(x, self._step + 1)
            return self.objective(distributed.gather(f), distributed.gather(as_tensor(labels, "labels")))

        return self._run({"images": x}, compute)

    def _objective_settings(self) -> dict[str, Any]:
        return self.ranking_config.to_core()

    @classmethod
    def _objective_arguments(cls, objective: dict[str, Any]) -> dict[str, Any]:
        return {"ranking": objective}


class TorchStudentTrainer(TorchTrainer):
    """The SLADE student (:class:`slade.StudentTrainer`'s step) on a module of your own:
    the labeled and the unlabeled images in one forward pass, then
    :class:`slade.StudentLoss` (ranking terms, feature basis W_a in group ``"basis"``,
    mining). During the basis warm-up the module runs in evaluation mode without gradients
    (only the basis trains), as the Rust student freezes its backbone and head.

    Args:
        model, optim_config, device, precision, seed: as :class:`TorchTeacherTrainer`
            (``OptimizerConfig.basis_lr`` sets the basis' rate).
        dim: the embedding width of the model (W_a is ``num_basis x dim``).
        num_basis, objective, **fields: as :class:`slade.StudentTrainer`.
    """

    _KIND = "student"
    _OBJECTIVE_GROUP = "basis"
    objective: StudentLoss

    def __init__(
        self,
        model: ModelSource,
        optim_config: OptimizerConfig | Mapping | None = None,
        *,
        dim: int,
        num_basis: int | None,
        device: Any = "cpu",
        objective: StudentObjectiveConfig | Mapping | None = None,
        precision: str = "fp32",
        seed: int = 0,
        sync_batchnorm: bool = True,
        **fields: Any,
    ):
        settings = StudentObjectiveConfig.mapping(
            objective, {**fields, "num_basis": num_basis}, "objective"
        )
        super().__init__(
            model,
            lambda device: StudentLoss(dim, num_basis, objective=settings, device=device),
            optim_config,
            device=device,
            precision=precision,
            seed=seed,
            dim=dim,
            sync_batchnorm=sync_batchnorm,
        )
        self.student_config = self.objective.objective

    def step(
        self,
        labeled_images: Any,
        labels: Any,
        unlabeled_images: Any,
        pseudo_labels: Any,
        true_labels: Any = None,
    ) -> dict[str, float]:
        """One training step (arguments and metrics as :meth:`slade.StudentTrainer.step`)."""
        xl = check_images(labeled_images, "labeled_images", self.device)
        xu = check_images(unlabeled_images, "unlabeled_images", self.device)
        if xl.shape[1:] != xu.shape[1:]:
            raise ShapeError(
                f"labeled_images are {tuple(xl.shape[1:])} but unlabeled_images are "
                f"{tuple(xu.shape[1:])}; both go through the model in one batch"
            )

        def compute() -> tuple[torch.Tensor, dict[str, float]]:
            f = self._embeddings(torch.cat([xl, xu]))
            n = xl.shape[0]
            self.objective.train()
            truth = optional_tensor(true_labels, "true_labels")
            return self.objective(
                distributed.gather(f[:n]),
                distributed.gather(as_tensor(labels, "labels")),
                distributed.gather(f[n:]),
                distributed.gather(as_tensor(pseudo_labels, "pseudo_labels")),
                None if truth is None else distributed.gather(truth),
            )

        return self._run({"labeled_images": xl, "unlabeled_images": xu}, compute)

    def _embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """One forward pass; during the warm-up in evaluation mode without gradients."""
        warming_up = self.objective.warming_up
        self.model.module.train(not warming_up)
        with torch.set_grad_enabled(not warming_up):
            return self.model.forward(images, self._step + 1)

    @property
    def basis(self) -> torch.Tensor | None:
        """W_a (``num_basis x dim``; None for ``"pseudo_only"``)."""
        return self.objective.W_a

    @property
    def basis_statistics(self) -> dict[str, float]:
        """The running statistics of the basis similarities (empty for ``"pseudo_only"``)."""
        if self.objective.basis is None:
            return {}
        names = ("mu_pos", "var_pos", "mu_neg", "var_neg", "updates_pos", "updates_neg")
        return {n: getattr(self.objective.basis, n).item() for n in names}

    def threshold_rules(self) -> tuple[float | str, float | str]:
        """The (T1, T2) rules in use, as the settings give them."""
        return self.student_config.t1, self.student_config.t2

    def _objective_settings(self) -> dict[str, Any]:
        return self.student_config.to_core()

    @classmethod
    def _objective_arguments(cls, objective: dict[str, Any]) -> dict[str, Any]:
        return {"objective": objective, "num_basis": objective["num_basis"]}


class TorchSwavTrainer(TorchTrainer):
    """SwAV (:class:`slade.SwavTrainer`'s step) on a module of your own: consecutive crops
    of one resolution embedded in one forward pass, then :class:`slade.SwavLoss` (its
    prototypes in group ``"head"``).

    Args:
        model, optim_config, device, precision, seed: as :class:`TorchTeacherTrainer`.
        dim: the embedding width of the model (the prototypes are ``K x dim``).
        swav, **swav_fields: as :class:`slade.SwavTrainer`.
    """

    _KIND = "swav"
    objective: SwavLoss

    def __init__(
        self,
        model: ModelSource,
        optim_config: OptimizerConfig | Mapping | None = None,
        *,
        dim: int,
        device: Any = "cpu",
        swav: SwavConfig | Mapping | None = None,
        precision: str = "fp32",
        seed: int = 0,
        sync_batchnorm: bool = True,
        **swav_fields: Any,
    ):
        settings = SwavConfig.mapping(swav, swav_fields, "swav")
        super().__init__(
            model,
            lambda device: SwavLoss(dim, swav=settings, device=device),
            optim_config,
            device=device,
            precision=precision,
            seed=seed,
            dim=dim,
            sync_batchnorm=sync_batchnorm,
        )
        self.swav_config = self.objective.swav

    def step(self, crops: Sequence[Any]) -> dict[str, float]:
        """One training step on ``[global_1, global_2, local_1, ...]``; the metrics of
        :meth:`slade.SwavTrainer.step`."""
        views = {f"crops[{i}]": c for i, c in enumerate(check_crops(crops, self.device))}

        def compute() -> tuple[torch.Tensor, dict[str, float]]:
            self.model.module.train()
            self.objective.train()
            crops = [distributed.gather(z) for z in self._embed_crops(list(views.values()))]
            return self.objective(crops), {}

        return self._run(views, compute)

    def _embed_crops(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """Embeddings of every crop; crops of one resolution that follow each other share a
        forward pass (and BatchNorm statistics), as in SwAV's reference code."""
        out: list[torch.Tensor] = []
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[2:] == crops[start].shape[2:]:
                end += 1
            z = self.model.forward(torch.cat(crops[start:end]), self._step + 1)
            out.extend(z.split(crops[start].shape[0]))
            start = end
        return out

    @property
    def prototypes(self) -> torch.Tensor:
        """The prototype matrix C (K x dim)."""
        return self.objective.prototypes

    def _objective_settings(self) -> dict[str, Any]:
        return self.swav_config.to_core()

    @classmethod
    def _objective_arguments(cls, objective: dict[str, Any]) -> dict[str, Any]:
        return {"swav": objective}


#: The trainer class of each checkpoint kind.
TRAINERS: dict[str, type[TorchTrainer]] = {
    "teacher": TorchTeacherTrainer,
    "student": TorchStudentTrainer,
    "swav": TorchSwavTrainer,
}


def load_torch_trainer(path: str | os.PathLike, model: ModelSource, *, device: Any = "cpu") -> TorchTrainer:
    """The Python-step trainer a checkpoint was saved from, on ``model`` (the module or
    factory it was trained from)."""
    kind = checkpoint.read_info(path).kind
    if kind not in TRAINERS:
        raise ConfigError(f"{os.fspath(path)} is a {kind!r} checkpoint, which slade cannot load here")
    return TRAINERS[kind].from_checkpoint(path, model, device=device)
