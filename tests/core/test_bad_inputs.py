"""The bad-input matrix (DESIGN.md §5): every argument of slade's public functions and trainer
methods that take tensors, given each bad value that applies, generated from one table
(``TABLE``).

A case is either ``Raises``: the call raises the named :class:`slade.SladeError` subclass,
its message names the argument and says what was expected; or ``Same``: the input is valid
in a form the code must handle (a strided or transposed view, a broadcast, a numpy array,
another integer dtype) and the result must equal that of a plain contiguous equivalent
built independently. A silent wrong answer, a panic (``InternalError``), an error of the
wrong class, a message that does not name the argument, or a hang (the timeout) fails.

The matrix lives in tests/core because it tests the contract of ``slade.errors`` (a module
of the package's top level, as losses and retrieval are) across the whole public API.
``conftest.py`` prints the number of cases after a run.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

import slade
from slade import (
    ConfigError,
    DeviceError,
    DtypeError,
    InvalidArgumentError,
    NonFiniteError,
    NotSupportedError,
    ShapeError,
    SladeError,
)

pytestmark = pytest.mark.timeout(60)

N, D = 6, 4
NAN, INF = float("nan"), float("inf")
MODEL = {"backbone": "convnet", "in_channels": 1, "dim": 8}
SIDE = 16  # the smallest image side the convnet takes
GEMM = 1e-6  # a few float32 roundings
NET = 1e-5


# --- cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raises:
    """``make(good)`` is a bad value of the argument: the call raises ``error`` with a
    message that names the argument (``name`` when it is spelled otherwise, e.g.
    ``crops[0]``) and matches ``expect`` (what was expected)."""

    label: str
    make: Callable[[Any], Any]
    error: type[SladeError]
    expect: str
    name: str | None = None
    cuda: bool = False


@dataclass(frozen=True)
class Same:
    """``make(good)`` is a valid value that the code must read right: the result equals
    that of ``like(good)`` (default: a contiguous copy of ``make(good)``)."""

    label: str
    make: Callable[[Any], Any]
    like: Callable[[Any], Any] | None = None
    cuda: bool = False
    # Compare to this relative tolerance, in float64, whatever the results' dtypes (a
    # float16 result against the float32 one of the same values).
    rtol: float | None = None


Case = Raises | Same


@dataclass(frozen=True)
class Target:
    """A public callable: ``call(**good())`` must succeed; ``bad`` lists the cases of each
    argument. ``rtol``: the relative tolerance of ``Same`` comparisons of floating results
    (0: bit for bit), for results whose kernels may round differently for another memory
    layout (GEMMs on transposed operands, convolutions). ``covers``: the public function
    whose signature the row covers (default ``call``); ``unchecked``: its parameters
    without cases."""

    name: str
    call: Callable[..., Any]
    good: Callable[[], dict[str, Any]]
    bad: Mapping[str, list[Case]]
    rtol: float = 0.0
    covers: Callable[..., Any] | None = None
    unchecked: tuple[str, ...] = field(default=())
    # Called after a Raises case: checks that the refused call changed nothing.
    unchanged: Callable[[], None] | None = None


def const(value: Any) -> Callable[[Any], Any]:
    return lambda _good: value


def contiguous(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).clone()
    if isinstance(value, torch.Tensor):
        return value.detach().clone(memory_format=torch.contiguous_format)
    if isinstance(value, (list, tuple)):
        return type(value)(contiguous(v) for v in value)
    return value


def poke(value: torch.Tensor, bad: float) -> torch.Tensor:
    out = value.clone()
    out.view(-1)[out.numel() // 2] = bad
    return out


def strided(value: torch.Tensor) -> torch.Tensor:
    """The same values every other element of a larger buffer whose gaps hold garbage (NaN,
    or a large integer), so code that ignores strides reads the garbage."""
    gap = torch.full_like(value, NAN if value.is_floating_point() else 10**6)
    return torch.stack([value, gap], dim=-1)[..., 0]


def offset(value: torch.Tensor) -> torch.Tensor:
    """The same values at a non-zero storage offset."""
    return torch.cat([value[:1], value])[1:]


def column_major(value: torch.Tensor) -> torch.Tensor:
    return value.t().contiguous().t()


def broadcast(value: torch.Tensor) -> torch.Tensor:
    """The first row repeated with a zero stride (an ``expand`` view)."""
    return value[:1].expand_as(value)


# --- the families of bad values -----------------------------------------------------------

TENSOR = r"torch\.Tensor or numpy\.ndarray|a tensor, an array"


MATRIX = r"2-D|\(N, dim\)"
FLOAT = r"floating|float tensor"
VECTOR = r"1-D|shape \(\d+,\)"
LENGTH = r"match|shape \(\d+,\)"
CUDA = r"(?i)cuda"


def wrong_types(required: bool = True) -> list[Case]:
    cases: list[Case] = [
        Raises("str", const("abc"), DtypeError, TENSOR),
        Raises("list-of-str", const(["a", "b"]), DtypeError, TENSOR),
    ]
    if required:
        cases.append(Raises("None", const(None), DtypeError, TENSOR))
    return cases


def low_precision(rule: str | None) -> list[Case]:
    """float16 and bfloat16 values: with ``"exact"`` the result is that of the same values
    in float32 (the code widens them), with ``"close"`` near it (the code computes in that
    precision)."""
    if rule is None:
        return []
    rtol = {"exact": None, "close": 2e-2}[rule]
    return [
        Same(
            str(dtype).removeprefix("torch."),
            lambda v, d=dtype: v.to(d),
            lambda v, d=dtype: v.to(d).float(),
            rtol=rtol,
        )
        for dtype in (torch.float16, torch.bfloat16)
    ]


def float_rows(
    required: bool = True,
    *,
    device: bool = True,
    rows: bool = True,
    cols: bool = True,
    low: str | None = "exact",
) -> list[Case]:
    """A ``(rows, dim)`` floating tensor of finite values. ``rows`` / ``cols``: whether its
    length / width must match another argument's; ``low``: see :func:`low_precision`."""
    cases: list[Case] = [
        *low_precision(low),
        *wrong_types(required),
        Raises("rank-1", lambda v: v[0], ShapeError, MATRIX),
        Raises("rank-3", lambda v: v[None], ShapeError, MATRIX),
        Raises("int64", lambda v: (10 * v).long(), DtypeError, FLOAT),
        Raises("bool", lambda v: v > 0, DtypeError, FLOAT),
        Raises("complex", lambda v: v.to(torch.complex64), DtypeError, FLOAT),
        Raises("numpy-int", lambda v: (10 * v).long().numpy(), DtypeError, FLOAT),
        Raises("nan", lambda v: poke(v, NAN), NonFiniteError, "NaN"),
        Raises("inf", lambda v: poke(v, -INF), NonFiniteError, "Inf"),
        Raises("no-rows", lambda v: v[:0], InvalidArgumentError, "empty"),
        Raises("no-columns", lambda v: v[:, :0], InvalidArgumentError, "empty"),
        Same("strided", strided),
        Same("offset", offset),
        Same("column-major", column_major),
        Same("broadcast", broadcast),
        Same("numpy", lambda v: v.numpy(), lambda v: v),
        Same("numpy-fortran", lambda v: np.asfortranarray(v.numpy()), lambda v: v),
        Same("requires-grad", lambda v: v.clone().requires_grad_(), lambda v: v),
    ]
    if rows:
        cases.append(Raises("rows-mismatch", lambda v: v[:-1], ShapeError, "match"))
    if cols:
        cases.append(Raises("dim-mismatch", lambda v: v[:, :-1], ShapeError, "dim"))
    if device:
        cases.append(Raises("cuda", lambda v: v.cuda(), DeviceError, CUDA, cuda=True))
    return cases


def on_cuda(rtol: float | None = None) -> Case:
    """Embeddings on a CUDA device with labels on the CPU, which the losses and miners
    move to the embeddings: the result of the CPU (to ``rtol``, or exactly)."""
    return Same("cuda", lambda v: v.cuda(), lambda v: v, cuda=True, rtol=rtol)


def int_labels(
    required: bool = True, *, negative: Case | None = None, device: bool = False
) -> list[Case]:
    """``(N,)`` integer labels. ``negative``: the case of negative labels (refused where
    labels are class indices, the same result as shifted labels where they are names)."""
    cases: list[Case] = [
        *wrong_types(required),
        Raises("float", lambda v: v.float(), DtypeError, "integer"),
        Raises("float-requires-grad", lambda v: v.float().requires_grad_(), DtypeError, "integer"),
        Raises("bool", lambda v: v > 0, DtypeError, "integer"),
        Raises("complex", lambda v: v.to(torch.complex64), DtypeError, "integer"),
        Raises("numpy-float", lambda v: v.double().numpy(), DtypeError, "integer"),
        Raises("rank-0", lambda v: v[0], ShapeError, VECTOR),
        Raises("rank-2", lambda v: v[:, None], ShapeError, VECTOR),
        Raises("short", lambda v: v[:-1], ShapeError, LENGTH),
        Raises("empty", lambda v: v[:0], ShapeError, LENGTH),
        Same("strided", strided),
        Same("offset", offset),
        Same("int32", lambda v: v.int(), lambda v: v),
        Same("uint8", lambda v: v.to(torch.uint8), lambda v: v),
        Same("numpy-int32", lambda v: v.int().numpy(), lambda v: v),
    ]
    if negative is not None:
        cases.append(negative)
    if device:
        cases.append(Raises("cuda", lambda v: v.cuda(), DeviceError, CUDA, cuda=True))
    return cases


def names_only() -> Case:
    """Labels only name classes: negative labels give the result of shifted ones."""
    return Same("negative", lambda v: v - 5, lambda v: v)


def class_index(bound: str) -> Case:
    """Labels are indices of ``bound`` classes: negative ones are refused."""
    return Raises("negative", lambda v: v - 1, InvalidArgumentError, rf">= 0|\[0, {bound}")


def count_arg(*, zero_ok: bool, upper: int | None = None) -> list[Case]:
    """A non-negative int (positive when not ``zero_ok``); ``upper``: a value above its
    bound."""
    cases: list[Case] = [
        Raises("str", const("2"), DtypeError, "int"),
        Raises("float", const(2.5), DtypeError, "int"),
        Raises("tensor", const(torch.tensor([1, 2])), DtypeError, "int"),
        Raises("negative", const(-1), InvalidArgumentError, "-1"),
    ]
    if not zero_ok:
        cases.append(Raises("zero", const(0), InvalidArgumentError, "at least 1|positive|smaller"))
    if upper is not None:
        cases.append(Raises("too-large", const(upper), InvalidArgumentError, "larger|at most"))
    return cases


def kmeans_row(function: Callable[..., Any]) -> Target:
    """:func:`slade.kmeans` and :func:`slade.sharded_kmeans` (one process) take the same
    arguments with the same rules."""
    return Target(
        function.__name__,
        function,
        lambda: {"x": embeddings(), "k": 3, "iters": 5, "seed": 0, "init": "k-means++", "tol": 0.0},
        {
            "x": float_rows(rows=False, cols=False, device=False),
            "k": count_arg(zero_ok=False, upper=N + 1),
            "iters": count_arg(zero_ok=True),
            "seed": count_arg(zero_ok=True),
            "init": [
                Raises("unknown", const("nonsense"), InvalidArgumentError, "k-means\\+\\+"),
                Raises("wrong-type", const(3), DtypeError, "k-means\\+\\+"),
                Raises("rows", const(embeddings(2)), ShapeError, "3"),
                Raises("dim", const(embeddings(3, D + 1)), ShapeError, "dim"),
                Raises("int", const(torch.ones(3, D, dtype=torch.long)), DtypeError, FLOAT),
                Raises("nan", const(poke(embeddings(3), NAN)), NonFiniteError, "NaN"),
                Raises("cuda", lambda _: embeddings(3).cuda(), DeviceError, CUDA, cuda=True),
            ],
            "tol": finite_number()
            + [Raises("negative", const(-1.0), InvalidArgumentError, ">= 0|non-negative")],
        },
    )


def finite_number(*, positive: bool = False) -> list[Case]:
    cases: list[Case] = [
        Raises("str", const("0.5"), DtypeError, "number"),
        Raises("nan", const(NAN), InvalidArgumentError, "finite"),
        Raises("inf", const(INF), InvalidArgumentError, "finite"),
    ]
    if positive:
        cases.append(Raises("zero", const(0.0), InvalidArgumentError, "positive|> 0"))
        cases.append(Raises("negative", const(-1.0), InvalidArgumentError, "positive|> 0"))
    return cases


def option(choices: str, *, number_ok: bool = False) -> list[Case]:
    """A name out of a fixed set (or a number, with ``number_ok``); the message lists the
    choices."""
    wrong = const([1]) if number_ok else const(3)
    return [
        Raises("unknown", const("nonsense"), InvalidArgumentError, choices),
        Raises("wrong-type", wrong, DtypeError, "str|string|number"),
    ]


def without(partner: str) -> Case:
    """None for an argument that comes in a pair with ``partner``, which is given."""
    return Raises("None", const(None), InvalidArgumentError, partner)


def flag() -> list[Case]:
    return [Raises("str", const("yes"), DtypeError, "bool")]


def pairs_arg(triplet_loss: bool) -> list[Case]:
    """A miner's ``(a1, p, a2, n)`` index tuple (the good value is one). A triplet tuple
    ``(a, p, n)`` is read by pair losses as the pairs ``(a, p)`` and ``(a, n)``, and pairs
    by the triplet loss as the triplets of positive and negative pairs sharing an anchor."""
    if triplet_loss:
        as_triplets = Same("as-triplets", lambda v: v, triplets_of)
    else:
        as_triplets = Same("triplets", triplets_of, lambda v: triplets_as_pairs(triplets_of(v)))
    return [
        Raises("str", const("abc"), ShapeError, "4 index tensors"),
        Raises("two", lambda v: v[:2], ShapeError, "4 index tensors"),
        Raises("float", lambda v: (v[0].double(), *v[1:]), DtypeError, "integer", "pairs[a1]"),
        Raises(
            "out-of-range",
            lambda v: (v[0], v[1] + N, *v[2:]),
            InvalidArgumentError,
            "0..6",
            "pairs[p]",
        ),
        Raises(
            "negative",
            lambda v: (v[0], v[1], v[2] - N, v[3]),
            InvalidArgumentError,
            "0..6",
            "pairs[a2]",
        ),
        Raises("lengths", lambda v: (v[0][:-1], *v[1:]), ShapeError, "lengths", "pairs"),
        Raises("rank-2", lambda v: (v[0][:, None], *v[1:]), ShapeError, "1-D", "pairs[a1]"),
        Same("strided", lambda v: tuple(strided(t) for t in v)),
        Same("int32", lambda v: tuple(t.int() for t in v), lambda v: v),
        as_triplets,
    ]


def triplets_of(pairs: tuple) -> tuple:
    a1, p, a2, n = pairs
    keep = [(int(a), int(q), int(m)) for a, q in zip(a1, p) for b, m in zip(a2, n) if a == b]
    return tuple(torch.tensor(column) for column in zip(*keep))


def triplets_as_pairs(triplets: tuple) -> tuple:
    a, p, n = triplets
    return (a, p, a, n)


def image_batch(required: bool = True, *, moved: bool = False) -> list[Case]:
    """A ``(N, 1, H, W)`` floating batch of a convnet on the CPU; ``moved``: a batch on
    another device is moved to the model's (else refused)."""
    if moved:
        device: Case = Same("cuda", lambda v: v.cuda(), lambda v: v, cuda=True, rtol=NET)
    else:
        device = Raises("cuda", lambda v: v.cuda(), DeviceError, CUDA, cuda=True)
    cases: list[Case] = [
        *wrong_types(required),
        Raises("rank-3", lambda v: v[:, 0], ShapeError, "4-D"),
        Raises("rank-5", lambda v: v[None], ShapeError, "4-D"),
        Raises("uint8", lambda v: (255 * v.clamp(0, 1)).to(torch.uint8), DtypeError, FLOAT),
        Raises("int64", lambda v: v.long(), DtypeError, FLOAT),
        Raises("bool", lambda v: v > 0, DtypeError, FLOAT),
        Raises("complex", lambda v: v.to(torch.complex64), DtypeError, FLOAT),
        Raises("nan", lambda v: poke(v, NAN), NonFiniteError, "NaN"),
        Raises("inf", lambda v: poke(v, INF), NonFiniteError, "Inf"),
        Raises("empty", lambda v: v[:0], InvalidArgumentError, "empty"),
        Raises("channels", lambda v: v.expand(-1, 3, -1, -1), ShapeError, "channel"),
        Raises("too-small", lambda v: v[..., :8, :8], ShapeError, f"at least {SIDE}x{SIDE}"),
        Same("strided", strided),
        Same("channels-last", lambda v: v.contiguous(memory_format=torch.channels_last)),
        *low_precision("exact"),
        Same("numpy", lambda v: v.numpy(), lambda v: v),
        device,
    ]
    return cases


# --- good inputs --------------------------------------------------------------------------


def embeddings(rows: int = N, dim: int = D, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


def labels(rows: int = N) -> torch.Tensor:
    return torch.arange(rows) % 3


def images(rows: int = 4, seed: int = 0, side: int = SIDE) -> torch.Tensor:
    return torch.rand(rows, 1, side, side, generator=torch.Generator().manual_seed(seed))


def miner_pairs() -> tuple:
    return tuple(torch.tensor(v) for v in ([0, 1, 2, 3], [1, 0, 3, 2], [0, 0, 1, 4], [2, 4, 5, 1]))


def basis(**settings: Any) -> slade.FeatureBasis:
    torch.manual_seed(0)
    return slade.FeatureBasis(3, D, **settings)


def index() -> Any:
    gallery = slade.Index()
    gallery.add(embeddings(8, seed=1), labels(8), [f"g{i}" for i in range(8)])
    return gallery


def index_add(**args: Any) -> tuple:
    """What an index holds after ``add(**args)``."""
    gallery = index()
    gallery.add(**args)
    return gallery.embeddings, gallery.labels, gallery.ids


def model() -> slade.EmbeddingModel:
    return slade.EmbeddingModel(MODEL).eval()


def loss_inputs(**settings: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"embeddings": embeddings(), "labels": labels(), **settings}


def crop(index: int, rule: Callable[[Any], Any]) -> Callable[[list], list]:
    """``rule`` applied to crop ``index`` of the list."""
    return lambda crops: [rule(c) if i == index else c for i, c in enumerate(crops)]


def in_crop(index: int, cases: list[Case], argument: str = "crops") -> list[Case]:
    """The cases of one tensor, applied to item ``index`` of a list (SwAV's crops, or the
    embeddings of the crops)."""
    out: list[Case] = []
    for case in cases:
        if isinstance(case, Raises):
            out.append(
                Raises(
                    f"{case.label}@{index}",
                    crop(index, case.make),
                    case.error,
                    case.expect,
                    case.name or f"{argument}[{index}]",
                    case.cuda,
                )
            )
        else:
            like = case.like or (lambda v, make=case.make: contiguous(make(v)))
            out.append(
                Same(
                    f"{case.label}@{index}",
                    crop(index, case.make),
                    crop(index, like),
                    case.cuda,
                    case.rtol,
                )
            )
    return out


def crop_list(batch: Callable[[], list[Case]] = image_batch) -> list[Case]:
    """SwAV's crop list: the list itself, then ``batch``'s cases in the first crop and a few
    of them in the second."""
    crop_cases = [c for c in batch() if c.label not in ("str", "list-of-str", "None")]
    return [
        Raises("tensor", lambda v: v[0], DtypeError, "list of tensors"),
        Raises("str", const("abc"), DtypeError, "list of tensors"),
        Raises("one", lambda v: v[:1], InvalidArgumentError, "2|two"),
        Raises("batch-mismatch", crop(1, lambda c: c[:-1]), ShapeError, "the same images"),
        *in_crop(0, crop_cases),
        *in_crop(1, [c for c in crop_cases if c.label in ("nan", "int64", "strided")]),
    ]


# --- the objectives as modules (slade.StudentLoss, TeacherLoss, SwavLoss) ----------------


def student_loss(**fields: Any) -> slade.StudentLoss:
    torch.manual_seed(0)
    return slade.StudentLoss(D, 3, **fields)


def student_loss_inputs() -> dict[str, Any]:
    return {
        "emb_labeled": embeddings(),
        "labels": labels(),
        "emb_unlabeled": embeddings(seed=1),
        "pseudo_labels": torch.tensor([0, 0, 1, 1, 2, 2]),
    }


def swav_loss() -> slade.SwavLoss:
    torch.manual_seed(0)
    return slade.SwavLoss(D, num_prototypes=5)


def embedding_list() -> list[Case]:
    """SwavLoss's ``[z_global_1, z_global_2, ...]``: a list of ``(B, dim)`` embeddings of
    the same images."""
    crop_cases = [
        c
        for c in float_rows(rows=False, low=None)
        if c.label not in ("str", "list-of-str", "None", "broadcast")
    ]
    return [
        Raises("tensor", lambda v: v[0], DtypeError, "list of tensors"),
        Raises("str", const("abc"), DtypeError, "list of tensors"),
        Raises("one", lambda v: v[:1], InvalidArgumentError, "2|two"),
        Raises("batch-mismatch", crop(1, lambda c: c[:-1]), ShapeError, "the same images"),
        *in_crop(0, crop_cases, "embeddings"),
        *in_crop(1, [c for c in crop_cases if c.label in ("nan", "int64", "strided")], "embeddings"),
    ]


def objective_rows() -> list[Target]:
    return [
        Target(
            "StudentLoss",
            slade.StudentLoss,
            lambda: {"dim": D, "num_basis": 3},
            {
                "dim": count_arg(zero_ok=False),
                "num_basis": count_arg(zero_ok=False)
                + [Raises("None", const(None), ConfigError, "num_basis")],
            },
            covers=slade.StudentLoss.__init__,
            unchecked=("objective", "device", "dtype"),
        ),
        Target(
            "StudentLoss.forward",
            lambda **args: student_loss()(**args),
            student_loss_inputs,
            {
                "emb_labeled": float_rows(low="close"),
                "labels": int_labels(negative=class_index("3"))
                + [Raises("too-large", lambda v: v + 3, InvalidArgumentError, r"\[0, 3\)")],
                "emb_unlabeled": float_rows(low="close"),
                "pseudo_labels": int_labels(negative=class_index("")),
            },
            rtol=GEMM,
            covers=slade.StudentLoss.forward,
        ),
        Target(
            "StudentLoss.forward (oracle)",
            lambda **args: student_loss(mining="oracle")(**args),
            lambda: {**student_loss_inputs(), "true_labels": labels()},
            {
                "true_labels": int_labels(required=False, negative=names_only())
                + [Raises("None", const(None), InvalidArgumentError, "oracle")]
            },
            rtol=GEMM,
            covers=slade.StudentLoss.forward,
        ),
        Target(
            "TeacherLoss",
            lambda **args: slade.TeacherLoss(**args)(embeddings(), labels()),
            dict,
            {},
            covers=slade.TeacherLoss.__init__,
            unchecked=("ranking",),  # settings: tests/core/test_settings.py
        ),
        Target(
            "TeacherLoss.forward",
            lambda **args: slade.TeacherLoss()(**args),
            lambda: {"embeddings": embeddings(), "labels": labels()},
            {
                "embeddings": float_rows(cols=False, device=False, low="close")
                + [on_cuda(rtol=1e-4)],
                "labels": int_labels(negative=names_only()),
            },
            rtol=GEMM,
            covers=slade.TeacherLoss.forward,
        ),
        Target(
            "SwavLoss",
            lambda **args: slade.SwavLoss(**args)([embeddings(4), embeddings(4, seed=1)]),
            lambda: {"dim": D},
            {"dim": count_arg(zero_ok=False)},
            covers=slade.SwavLoss.__init__,
            unchecked=("swav", "device", "dtype"),
        ),
        Target(
            "SwavLoss.forward",
            lambda **args: swav_loss()(**args),
            lambda: {"embeddings": [embeddings(4), embeddings(4, seed=1)]},
            {"embeddings": embedding_list()},
            rtol=GEMM,
            covers=slade.SwavLoss.forward,
        ),
    ]


# --- the Python-step trainers on a module of the user's (slade.TorchTeacherTrainer, ...) --


class UserNet(torch.nn.Module):
    """A user's own embedding network: conv, BatchNorm, pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.embedding = torch.nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.embedding(self.body(x)), dim=1)


def user_images(required: bool = True) -> list[Case]:
    """A batch for the user's module: what slade checks (a floating tensor or array with
    rows, finite, on the model's device). Its rank, channels and size are the module's to
    check, and a float16 batch meets float32 weights as in any torch loop."""
    kept = (
        "str", "list-of-str", "None", "uint8", "int64", "bool", "complex", "nan", "inf",
        "empty", "strided", "channels-last", "numpy", "cuda",
    )
    return [c for c in image_batch(required) if c.label in kept]



# --- the table ----------------------------------------------------------------------------


def rank_loss_rows(
    name: str, function: Callable[..., Any], params: dict[str, list[Case]], settings: dict[str, Any]
) -> list[Target]:
    return [
        Target(
            name,
            function,
            loss_inputs(**settings),
            {
                "embeddings": float_rows(cols=False, device=False, low="close")
                + [on_cuda(rtol=1e-4)],
                "labels": int_labels(required=False, negative=names_only())
                + [Raises("None", const(None), InvalidArgumentError, "pairs")],
                **params,
            },
            rtol=GEMM,
        ),
        Target(
            f"{name} with pairs",
            function,
            lambda: {"embeddings": embeddings(), "pairs": miner_pairs(), **settings},
            {"pairs": pairs_arg(triplet_loss=function is slade.losses.triplet_margin)},
            rtol=GEMM,
        ),
    ]


LAST: dict[str, Any] = {}


def trainer_untouched() -> None:
    """The trainer of the last call, after a refused step: no update, no gradient, the
    state of a new trainer."""
    trainer, fresh = LAST["trainer"], LAST["factory"]()
    assert trainer.step_count == 0
    assert all(p.grad is None or not p.grad.any() for p in trainer.parameters())
    want = fresh.state_dict()
    for key, value in trainer.state_dict().items():
        assert torch.equal(value, want[key]), key


def module_rows(
    cls: type, params: dict[str, list[Case]], settings: dict[str, Any], miner: bool = False
) -> list[Target]:
    """A PML drop-in module: its constructor's settings (refused when the module is
    called) and its forward's arguments."""
    refused = [Raises("tensor", const(embeddings()), NotSupportedError, "not supported")]
    labels_cases = int_labels(required=miner, negative=names_only())
    if not miner:
        labels_cases.append(Raises("None", const(None), InvalidArgumentError, "pairs"))
    return [
        Target(
            cls.__name__,
            lambda **args: cls(**args)(embeddings(), labels()),
            lambda: dict(settings),
            params,
            covers=cls.__init__,
        ),
        Target(
            f"{cls.__name__}.forward",
            lambda **args: cls(**settings)(**args),
            lambda: {"embeddings": embeddings(), "labels": labels()},
            {
                "embeddings": float_rows(
                    cols=False, device=False, low="exact" if miner else "close"
                )
                + [on_cuda(rtol=None if miner else 1e-4)],
                "labels": labels_cases,
                "ref_emb": refused,
                "ref_labels": [
                    Raises("tensor", const(labels()), NotSupportedError, "not supported")
                ],
            },
            rtol=0.0 if miner else GEMM,
            covers=cls.forward,
            # Checked as the functions' pairs, whose messages name them "pairs".
            unchecked=() if miner else ("indices_tuple",),
        ),
    ]


@dataclass(frozen=True)
class Trainers:
    """The three trainer classes of one kind, how to build each for the matrix, and the
    cases of their image batches and crop lists."""

    teacher: type
    student: type
    swav: type
    build: Callable[[type, dict[str, Any]], Any]
    images: Callable[[], list[Case]]
    crops: Callable[[], list[Case]]
    unlabeled_size: list[Case] = field(default_factory=list)


def build_rust(cls: type, fields: dict[str, Any]) -> Any:
    return cls(MODEL, **fields)


def build_torch(cls: type, fields: dict[str, Any]) -> Any:
    return cls(UserNet, dim=8, **fields)


RUST = Trainers(
    slade.TeacherTrainer,
    slade.StudentTrainer,
    slade.SwavTrainer,
    build_rust,
    image_batch,
    crop_list,
    [Raises("other-size", lambda v: images(6, 1, SIDE + 4), ShapeError, "size|match")],
)
TORCH = Trainers(
    slade.TorchTeacherTrainer,
    slade.TorchStudentTrainer,
    slade.TorchSwavTrainer,
    build_torch,
    user_images,
    lambda: crop_list(user_images),
)


def trainer_rows(kind: Trainers, method: str) -> list[Target]:
    """``method`` (``step``, ``compute_gradients``) of each trainer of ``kind``; a refused
    call leaves the trainer as new."""

    def call(cls: type, **fields: Any) -> Callable[..., Any]:
        def factory() -> Any:
            return kind.build(cls, fields)

        def run(**args: Any) -> Any:
            LAST.update(trainer=factory(), factory=factory)
            return getattr(LAST["trainer"], method)(**args)

        return run

    def student_batch() -> dict[str, Any]:
        return {
            "labeled_images": images(4, 0),
            "labels": labels(4),
            "unlabeled_images": images(6, 1),
            "pseudo_labels": torch.tensor([0, 0, 1, 1, 2, 2]),
        }

    def row(name: str, cls: type, run: Callable[..., Any], good: Any, bad: Any) -> Target:
        return Target(
            f"{name}.{method}",
            run,
            good,
            bad,
            rtol=NET,
            covers=getattr(cls, method),
            unchanged=trainer_untouched,
        )

    return [
        row(
            kind.teacher.__name__,
            kind.teacher,
            call(kind.teacher),
            lambda: {"images": images(), "labels": labels(4)},
            {"images": kind.images(), "labels": int_labels(negative=names_only())},
        ),
        row(
            kind.student.__name__,
            kind.student,
            call(kind.student, num_basis=3),
            student_batch,
            {
                "labeled_images": kind.images(),
                "labels": int_labels(negative=class_index("3"))
                + [Raises("too-large", lambda v: v + 3, InvalidArgumentError, r"\[0, 3\)")],
                "unlabeled_images": kind.images() + kind.unlabeled_size,
                "pseudo_labels": int_labels(negative=class_index("")),
            },
        ),
        row(
            f"{kind.student.__name__} (oracle)",
            kind.student,
            call(kind.student, num_basis=3, mining="oracle"),
            lambda: {**student_batch(), "true_labels": labels(6)},
            {
                "true_labels": int_labels(required=False, negative=names_only())
                + [Raises("None", const(None), InvalidArgumentError, "oracle")]
            },
        ),
        row(
            kind.swav.__name__,
            kind.swav,
            call(kind.swav, num_prototypes=5),
            lambda: {"crops": [images(4, 0), images(4, 1)]},
            {"crops": kind.crops()},
        ),
    ]


TABLE: list[Target] = [
    *rank_loss_rows(
        "losses.contrastive",
        slade.losses.contrastive,
        {"pos_margin": finite_number(), "neg_margin": finite_number()},
        {"pos_margin": 0.1, "neg_margin": 0.9},
    ),
    *rank_loss_rows(
        "losses.multi_similarity",
        slade.losses.multi_similarity,
        {
            "alpha": finite_number(positive=True),
            "beta": finite_number(positive=True),
            "base": finite_number(),
        },
        {"alpha": 2.0, "beta": 10.0, "base": 0.5},
    ),
    *rank_loss_rows(
        "losses.triplet_margin",
        slade.losses.triplet_margin,
        {"margin": finite_number()},
        {"margin": 0.2},
    ),
    Target(
        "losses.multi_similarity_with_miner",
        slade.losses.multi_similarity_with_miner,
        loss_inputs(epsilon=0.5, alpha=2.0, beta=10.0, base=0.5),
        {
            "embeddings": float_rows(cols=False, device=False, low="close") + [on_cuda(rtol=1e-4)],
            "labels": int_labels(negative=names_only()),
            "epsilon": finite_number(),
            "alpha": finite_number(positive=True),
            "beta": finite_number(positive=True),
            "base": finite_number(),
        },
        rtol=GEMM,
    ),
    *module_rows(
        slade.losses.ContrastiveLoss,
        {"pos_margin": finite_number(), "neg_margin": finite_number()},
        {"pos_margin": 0.1, "neg_margin": 0.9},
    ),
    *module_rows(
        slade.losses.MultiSimilarityLoss,
        {
            "alpha": finite_number(positive=True),
            "beta": finite_number(positive=True),
            "base": finite_number(),
        },
        {"alpha": 2.0, "beta": 10.0, "base": 0.5},
    ),
    *module_rows(
        slade.losses.TripletMarginLoss,
        {
            "margin": finite_number(),
            "swap": [Raises("True", const(True), NotSupportedError, "not supported")],
            "smooth_loss": [Raises("True", const(True), NotSupportedError, "not supported")],
            "triplets_per_anchor": [Raises("5", const(5), NotSupportedError, "not supported")],
        },
        {"margin": 0.2},
    ),
    *module_rows(
        slade.miners.MultiSimilarityMiner, {"epsilon": finite_number()}, {"epsilon": 0.5}, True
    ),
    Target(
        "miners.multi_similarity",
        slade.miners.multi_similarity,
        loss_inputs(epsilon=0.5),
        {
            "embeddings": float_rows(cols=False, device=False) + [on_cuda()],
            "labels": int_labels(negative=names_only()),
            "epsilon": finite_number(),
        },
    ),
    Target(
        "miners.basis_pairs",
        slade.miners.basis_pairs,
        lambda: {
            "basis": basis(),
            "emb_u": embeddings(),
            "pseudo_u": labels(),
            "t1": 0.2,
            "t2": -0.2,
            "require_pseudo_agreement": True,
        },
        {
            "basis": [
                Raises("str", const("abc"), DtypeError, "FeatureBasis"),
                Raises("tensor", const(torch.ones(3, D)), DtypeError, "FeatureBasis"),
            ],
            "emb_u": float_rows(rows=False),
            "pseudo_u": int_labels(required=False, negative=class_index(""))
            + [Raises("None", const(None), InvalidArgumentError, "require_pseudo_agreement")],
            "t1": finite_number()[1:] + option("mu", number_ok=True),
            "t2": finite_number()[1:] + option("mu", number_ok=True),
            "require_pseudo_agreement": flag(),
        },
    ),
    Target(
        "FeatureBasis",
        slade.FeatureBasis,
        lambda: {"num_basis": 3, "dim": D},
        {"num_basis": count_arg(zero_ok=False), "dim": count_arg(zero_ok=False)},
        covers=slade.FeatureBasis.__init__,
        unchecked=(
            "momentum",
            "sd_margin",
            "sd_weight",
            "regularizer",
            "sd_statistics",
            "num_pseudo_classes",
            "device",
            "dtype",
        ),
    ),
    Target(
        "FeatureBasis.representation",
        lambda emb: basis().representation(emb),
        lambda: {"emb": embeddings()},
        {"emb": float_rows(rows=False)},
        covers=slade.FeatureBasis.representation,
    ),
    Target(
        "FeatureBasis.similarity",
        lambda emb: basis().similarity(emb),
        lambda: {"emb": embeddings()},
        {"emb": float_rows(rows=False)},
        covers=slade.FeatureBasis.similarity,
    ),
    Target(
        "FeatureBasis.loss",
        lambda **args: basis().loss(**args),
        lambda: {
            "emb_l": embeddings(),
            "labels_l": labels(),
            "emb_u": embeddings(seed=1),
            "pseudo_u": labels(),
        },
        {
            "emb_l": float_rows(required=False) + [without("labels_l")],
            "labels_l": int_labels(required=False, negative=class_index("3"))
            + [
                Raises("too-large", lambda v: v + 1, InvalidArgumentError, r"\[0, 3\)"),
                without("emb_l"),
            ],
            "emb_u": float_rows(required=False) + [without("pseudo_u")],
            "pseudo_u": int_labels(required=False, negative=class_index("")) + [without("emb_u")],
        },
        covers=slade.FeatureBasis.loss,
    ),
    *[kmeans_row(function) for function in (slade.kmeans, slade.sharded_kmeans)],
    *[
        Target(
            f"{function.__name__} with init centroids",
            function,
            lambda: {"x": embeddings(), "k": 3, "init": embeddings(3, seed=2)},
            {
                "init": [
                    c
                    for c in float_rows(rows=False, cols=False, device=False)
                    if c.label in ("strided", "column-major", "offset", "numpy", "requires-grad")
                ]
            },
        )
        for function in (slade.kmeans, slade.sharded_kmeans)
    ],
    Target(
        "cluster.cluster_labels",
        slade.cluster.cluster_labels,
        lambda: {"embeddings": embeddings(), "k": 3},
        {
            "embeddings": float_rows(rows=False, cols=False, device=False),
            "k": count_arg(zero_ok=False, upper=N + 1),
        },
        unchecked=("iters", "seed", "init", "tol"),
    ),
    Target(
        "nmi",
        slade.nmi,
        lambda: {"labels_a": labels(), "labels_b": torch.tensor([1, 1, 0, 2, 2, 2])},
        {
            "labels_a": int_labels(negative=names_only()),
            "labels_b": int_labels(negative=names_only()),
        },
    ),
    Target(
        "nmi of one labeling",
        lambda labels_a: slade.nmi(labels_a, labels_a),
        lambda: {"labels_a": labels()},
        {"labels_a": [Raises("empty", lambda v: v[:0], InvalidArgumentError, "empty")]},
    ),
    Target(
        "knn",
        slade.knn,
        lambda: {
            "query": embeddings(),
            "reference": embeddings(8, seed=1),
            "k": 3,
            "engine": "auto",
        },
        {
            "query": float_rows(rows=False),
            "reference": float_rows(required=False, rows=False),
            "k": count_arg(zero_ok=False, upper=9)
            + [Raises("None", const(None), DtypeError, "int")],
            "engine": option("gemm"),
        },
    ),
    *[
        Target(
            f"knn engine={engine}",
            slade.knn,
            lambda engine=engine: {
                "query": embeddings(),
                "reference": embeddings(8, seed=1),
                "k": 3,
                "engine": engine,
            },
            {
                argument: [c for c in float_rows(rows=False) if isinstance(c, Same)]
                for argument in ("query", "reference")
            },
        )
        for engine in ("gemm", "kdtree", "torch")
    ],
    Target(
        "knn self-search",
        slade.knn,
        lambda: {"query": embeddings(), "k": 2},
        {"k": [Raises("all", const(N), InvalidArgumentError, "itself")]},
    ),
    Target(
        "retrieval_metrics",
        slade.retrieval_metrics,
        lambda: {
            "query": embeddings(),
            "query_labels": labels(),
            "reference": embeddings(8, seed=1),
            "reference_labels": labels(8),
            "k": None,
            "recall_at": (1, 2),
            "avg_of_avgs": False,
            "exclude_lone_queries": True,
            "engine": "auto",
            "nmi": False,
        },
        {
            "query": float_rows(rows=False),
            "query_labels": int_labels()
            + [
                Raises("lone", lambda v: v + 10, InvalidArgumentError, "occurs in reference_labels")
            ],
            "reference": float_rows(required=False, rows=False) + [without("reference_labels")],
            "reference_labels": int_labels(required=False) + [without("reference")],
            "k": count_arg(zero_ok=False, upper=9)
            + [Raises("too-small", const(1), InvalidArgumentError, "smaller")],
            "recall_at": [
                Raises("int", const(2), DtypeError, "sequence|list"),
                Raises("str", const("12"), DtypeError, "sequence|list|int"),
                Raises("float", const([1, 2.5]), DtypeError, "int"),
                Raises("zero", const([0, 1]), InvalidArgumentError, "between 1"),
                Raises("negative", const([-1]), InvalidArgumentError, "-1"),
                Raises("too-large", const([9]), InvalidArgumentError, "between 1"),
            ],
            "avg_of_avgs": flag(),
            "exclude_lone_queries": flag(),
            "engine": option("gemm"),
            "nmi": flag(),
        },
    ),
    Target(
        "retrieval_metrics self-retrieval",
        slade.retrieval_metrics,
        lambda: {"query": embeddings(), "query_labels": labels(), "recall_at": (1, 2), "nmi": True},
        {
            "query": [
                c for c in float_rows(rows=False, cols=False, device=False) if isinstance(c, Same)
            ],
            "query_labels": [names_only(), Same("strided", strided)],
        },
    ),
    Target(
        "EmbeddingModel.forward",
        lambda images: model().forward(images),
        lambda: {"images": images()},
        {"images": image_batch()},
        rtol=NET,
        covers=slade.EmbeddingModel.forward,
    ),
    Target(
        "EmbeddingModel.features",
        lambda images: model().features(images),
        lambda: {"images": images()},
        {"images": image_batch()},
        rtol=NET,
        covers=slade.EmbeddingModel.features,
        unchecked=("train",),
    ),
    Target(
        "EmbeddingModel.embed",
        lambda **args: model().embed(**args),
        lambda: {"images": images(), "batch_size": 3},
        {"images": image_batch(moved=True), "batch_size": count_arg(zero_ok=False)},
        rtol=NET,
        covers=slade.EmbeddingModel.embed,
    ),
    Target(
        "Index.add",
        index_add,
        lambda: {"embeddings": embeddings(), "labels": labels(), "ids": [str(i) for i in range(N)]},
        {
            "embeddings": [c for c in float_rows(device=False) if c.label != "rows-mismatch"],
            "labels": int_labels(required=False) + [without("every add")],
            "ids": [
                without("every add"),
                Raises("str", const("abcdef"), DtypeError, "list of str"),
                Raises("ints", const(list(range(N))), DtypeError, "str"),
                Raises("short", const(["a"]), ShapeError, "6"),
            ],
        },
        covers=slade.Index.add,
    ),
    Target(
        "Index.search",
        lambda **args: index().search(**args),
        lambda: {"queries": embeddings(), "k": 3},
        {
            "queries": [c for c in float_rows(rows=False, device=False) if c.label != "rank-1"],
            "k": count_arg(zero_ok=False, upper=9),
        },
        covers=slade.Index.search,
    ),
    *trainer_rows(RUST, "step"),
    *trainer_rows(RUST, "compute_gradients"),
    *objective_rows(),
    *trainer_rows(TORCH, "step"),
]


# --- running a case -----------------------------------------------------------------------


def as_plain(value: Any) -> Any:
    """Results as nested Python and numpy values: tensors detached on the CPU."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if isinstance(value, Mapping):
        return {k: as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value


def assert_close(got: Any, want: Any, rtol: float, where: str = "result") -> None:
    """Equal structure, numbers equal to ``rtol`` compared in float64."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_close(got[key], want[key], rtol, f"{where}[{key!r}]")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, rtol, f"{where}[{i}]")
    else:
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, err_msg=where)


def assert_same(got: Any, want: Any, rtol: float, where: str = "result") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_same(got[key], want[key], rtol, f"{where}[{key!r}]")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, rtol, f"{where}[{i}]")
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype, where
        assert got.shape == want.shape, where
        if rtol and want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, err_msg=where)
        else:
            np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, float) and rtol:
        assert math.isclose(got, want, rel_tol=rtol, abs_tol=rtol), (where, got, want)
    else:
        assert got == want or (got != got and want != want), (where, got, want)


def cases() -> list[Any]:
    params = []
    for target in TABLE:
        for argument, argument_cases in target.bad.items():
            for case in argument_cases:
                marks = [pytest.mark.cuda] if case.cuda else []
                params.append(
                    pytest.param(
                        target,
                        argument,
                        case,
                        marks=marks,
                        id=f"{target.name}-{argument}-{case.label}",
                    )
                )
    return params


CASES = cases()


def names_argument(message: str, name: str) -> bool:
    return re.search(rf"(?<![\w\[]){re.escape(name)}(?![\w])", message) is not None


@pytest.mark.parametrize(("target", "argument", "case"), CASES)
def test_bad_input(target: Target, argument: str, case: Case) -> None:
    args = target.good()
    good = args.get(argument)  # None for an argument left at its default
    if isinstance(case, Raises):
        args[argument] = case.make(good)
        with pytest.raises(case.error) as info:
            target.call(**args)
        message = str(info.value)
        name = case.name or argument
        assert names_argument(message, name), f"the message does not name {name}: {message}"
        assert re.search(case.expect, message), (
            f"the message does not say what was expected ({case.expect!r}): {message}"
        )
        if target.unchanged is not None:
            target.unchanged()
    else:
        like = case.like or (lambda value: contiguous(case.make(value)))
        reference = target.good()
        reference[argument] = like(reference[argument])
        want = as_plain(target.call(**reference))
        args[argument] = case.make(good)
        got = as_plain(target.call(**args))
        if case.rtol is None:
            assert_same(got, want, target.rtol)
        else:
            assert_close(got, want, case.rtol)


def test_every_good_call_succeeds() -> None:
    for target in TABLE:
        target.call(**target.good())


def covered(target: Target) -> Callable[..., Any] | None:
    """The public function whose arguments a row covers: ``covers``, else ``call`` unless
    it is a helper of this module."""
    function = target.covers or target.call
    return (
        None
        if "<lambda>" in function.__qualname__ or "<locals>" in function.__qualname__
        else function
    )


def test_the_table_covers_every_public_function_and_argument() -> None:
    """Every function of slade.losses and slade.miners, and slade's functions that take
    tensors, have rows; every parameter of a covered signature has cases, or is listed as
    unchecked (settings checked by tests/core/test_settings.py)."""
    arguments: dict[Any, set[str]] = {}
    for target in TABLE:
        function = covered(target)
        if function is not None:
            arguments.setdefault(function, set()).update(target.bad, target.unchecked)
    public = [getattr(slade.losses, n) for n in slade.losses.__all__]
    public += [getattr(slade.miners, n) for n in slade.miners.__all__]
    public += [slade.kmeans, slade.sharded_kmeans, slade.cluster.cluster_labels]
    public += [slade.nmi, slade.knn]
    public += [slade.retrieval_metrics, slade.Index.add, slade.Index.search]
    public += [slade.FeatureBasis.__init__, slade.FeatureBasis.representation]
    public += [slade.FeatureBasis.similarity, slade.FeatureBasis.loss]
    public += [slade.EmbeddingModel.forward, slade.EmbeddingModel.features]
    public += [slade.EmbeddingModel.embed]
    for objective in (slade.StudentLoss, slade.TeacherLoss, slade.SwavLoss):
        public += [objective.__init__, objective.forward]
    public += [
        t.step for t in (slade.TorchTeacherTrainer, slade.TorchStudentTrainer, slade.TorchSwavTrainer)
    ]
    for method in ("step", "compute_gradients"):
        public += [
            getattr(t, method)
            for t in (slade.TeacherTrainer, slade.StudentTrainer, slade.SwavTrainer)
        ]
    for module in (slade.losses, slade.miners):
        public += [
            method
            for name in module.__all__
            if isinstance(getattr(module, name), type)
            for method in (getattr(module, name).__init__, getattr(module, name).forward)
        ]
    public = [f for f in public if not isinstance(f, type)]
    missing_rows = [f.__qualname__ for f in public if f not in arguments]
    assert not missing_rows, f"no rows for {missing_rows}"
    for function, names in arguments.items():
        params = {
            p.name
            for p in inspect.signature(function).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
        assert params <= names, f"{function.__qualname__}: no cases for {sorted(params - names)}"
