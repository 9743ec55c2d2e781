"""Type stubs of the Rust extension ``slade._core``."""

import torch

__version__: str

def knn(
    query: torch.Tensor,
    reference: torch.Tensor | None = None,
    k: int = 1,
    engine: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]: ...
def retrieval_metrics(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    reference: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
    *,
    k: int | None = None,
    recall_at: list[int] = ...,
    avg_of_avgs: bool = False,
    exclude_lone_queries: bool = True,
    engine: str = "auto",
    nmi: bool = False,
) -> dict[str, float]: ...
def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    iters: int = 20,
    seed: int = 0,
    init: str | torch.Tensor = "k-means++",
    tol: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, float, int]: ...
def pseudo_label(
    embeddings: torch.Tensor,
    k: int,
    *,
    iters: int = 20,
    seed: int = 0,
    init: str | torch.Tensor = "k-means++",
    tol: float = 0.0,
) -> torch.Tensor: ...
def nmi(labels_a: torch.Tensor, labels_b: torch.Tensor) -> float: ...

_BasisState = tuple[
    torch.Tensor,
    torch.Tensor | None,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]
_BasisConfig = tuple[float, float, float, str]

def basis_init(
    num_basis: int, dim: int, num_pseudo_classes: int | None, config: _BasisConfig
) -> dict[str, torch.Tensor | None]: ...
def basis_representation(
    state: _BasisState, config: _BasisConfig, emb: torch.Tensor
) -> torch.Tensor: ...
def basis_similarity(
    state: _BasisState, config: _BasisConfig, emb: torch.Tensor
) -> torch.Tensor: ...
def basis_loss(
    state: _BasisState,
    config: _BasisConfig,
    emb_l: torch.Tensor | None,
    labels_l: torch.Tensor | None,
    emb_u: torch.Tensor | None,
    pseudo_u: torch.Tensor | None,
    training: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
def basis_pairs(
    state: _BasisState,
    config: _BasisConfig,
    emb_u: torch.Tensor,
    pseudo_u: torch.Tensor | None,
    t1: float | str,
    t2: float | str,
    require_pseudo_agreement: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...
