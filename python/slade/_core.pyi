"""Type stubs of the Rust extension ``slade._core``."""

from typing import Any, final

import torch

__all__ = [
    "__version__",
    "basis_init",
    "basis_representation",
    "basis_similarity",
    "basis_loss",
    "kmeans",
    "cluster_labels",
    "nmi",
    "basis_pairs",
    "threshold_value",
    "multi_similarity_miner",
    "knn",
    "retrieval_metrics",
    "_EmbeddingModel",
    "_SwavTrainer",
    "_TeacherTrainer",
    "_StudentTrainer",
    "read_checkpoint_info",
    "optimizer_groups",
    "lr_factor",
    "student_objective",
    "teacher_objective",
    "swav_objective",
    "contrastive_loss",
    "multi_similarity_loss",
    "multi_similarity_loss_with_miner",
    "triplet_margin_loss",
    "default_settings",
    "check_settings",
]

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

def default_settings(group: str) -> dict[str, Any]: ...
def check_settings(group: str, settings: dict[str, Any], at: str = "") -> dict[str, Any]: ...

class _Network:
    """Stub-only base: the methods of the model and of every trainer class."""

    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def device(self) -> str: ...
    @property
    def backbone_frozen(self) -> bool: ...
    def set_backbone_frozen(self, frozen: bool) -> None: ...
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor: ...
    def named_parameters(self) -> list[tuple[str, torch.Tensor]]: ...
    def named_buffers(self) -> list[tuple[str, torch.Tensor]]: ...
    def state_dict(self) -> list[tuple[str, torch.Tensor]]: ...
    def load_state_dict(
        self, state: list[tuple[str, torch.Tensor]], strict: bool = True
    ) -> dict[str, Any]: ...
    def load_backbone(
        self,
        weights: list[tuple[str, torch.Tensor]] | str,
        strict: bool = True,
        ignore_prefixes: list[str] = ...,
        strip_prefix: str | None = None,
    ) -> dict[str, Any]: ...

@final
class _EmbeddingModel(_Network):
    def __new__(
        cls, config: dict[str, Any], device: str = "cpu", seed: int = 0
    ) -> _EmbeddingModel: ...
    @property
    def training(self) -> bool: ...
    def set_training(self, training: bool) -> None: ...
    def forward(self, images: torch.Tensor) -> torch.Tensor: ...
    def features(self, images: torch.Tensor, train: bool | None = None) -> torch.Tensor: ...

class _Trainer(_Network):
    """Stub-only base: the methods every trainer class has."""

    def apply_gradients(self) -> dict[str, float]: ...
    @property
    def step_count(self) -> int: ...
    @property
    def objective_config(self) -> dict[str, Any]: ...
    def learning_rates(self) -> list[tuple[str, float]]: ...
    def optimizer_state(self) -> list[tuple[str, torch.Tensor]]: ...
    def load_model_state(
        self, state: list[tuple[str, torch.Tensor]], strict: bool = True
    ) -> dict[str, Any]: ...
    def model_state_dict(self) -> list[tuple[str, torch.Tensor]]: ...
    def save(self, path: str) -> None: ...
    def load(self, path: str) -> None: ...

@final
class _SwavTrainer(_Trainer):
    def __new__(
        cls, trainer: dict[str, Any], swav: dict[str, Any], device: str = "cpu"
    ) -> _SwavTrainer: ...
    def step(self, crops: list[torch.Tensor]) -> dict[str, float]: ...
    def compute_gradients(self, crops: list[torch.Tensor]) -> dict[str, float]: ...

@final
class _TeacherTrainer(_Trainer):
    def __new__(
        cls, trainer: dict[str, Any], ranking: dict[str, Any], device: str = "cpu"
    ) -> _TeacherTrainer: ...
    def step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]: ...
    def compute_gradients(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]: ...

@final
class _StudentTrainer(_Trainer):
    def __new__(
        cls, trainer: dict[str, Any], student: dict[str, Any], device: str = "cpu"
    ) -> _StudentTrainer: ...
    def step(
        self,
        labeled_images: torch.Tensor,
        labels: torch.Tensor,
        unlabeled_images: torch.Tensor,
        pseudo_labels: torch.Tensor,
        true_labels: torch.Tensor | None = None,
    ) -> dict[str, float]: ...
    compute_gradients = step
    def threshold_rules(self) -> tuple[float | str, float | str]: ...

def read_checkpoint_info(path: str) -> tuple[str, dict[str, Any], dict[str, Any], int]: ...
def optimizer_groups(
    settings: dict[str, Any], groups: list[str]
) -> list[tuple[str, float, float]]: ...
def lr_factor(settings: dict[str, Any], step: int) -> float: ...
def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    iters: int = 20,
    seed: int = 0,
    init: str | torch.Tensor = ...,
    tol: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, float, int]: ...
def cluster_labels(
    embeddings: torch.Tensor,
    k: int,
    *,
    iters: int = 20,
    seed: int = 0,
    init: str | torch.Tensor = ...,
    tol: float = 0.0,
) -> torch.Tensor: ...
def nmi(labels_a: torch.Tensor, labels_b: torch.Tensor) -> float: ...

# The basis state by name (weight, pseudo_head, mu_pos, var_pos, mu_neg, var_neg,
# updates_pos, updates_neg) and its settings by name (slade.settings.BasisConfig's fields).
_BasisState = dict[str, torch.Tensor | None]
_BasisConfig = dict[str, Any]

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
def threshold_value(
    rule: float | str, side: str, mu_pos: float | None = None, mu_neg: float | None = None
) -> float | None: ...
def contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    pairs: list[torch.Tensor] | None = None,
) -> torch.Tensor: ...
def multi_similarity_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    pairs: list[torch.Tensor] | None = None,
) -> torch.Tensor: ...
def multi_similarity_loss_with_miner(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    epsilon: float = 0.1,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
) -> torch.Tensor: ...
def triplet_margin_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    margin: float = ...,
    pairs: list[torch.Tensor] | None = None,
) -> torch.Tensor: ...
def multi_similarity_miner(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    epsilon: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...

def student_objective(
    settings: dict[str, Any],
    basis: _BasisState | None,
    emb_labeled: torch.Tensor,
    labels: torch.Tensor,
    emb_unlabeled: torch.Tensor,
    pseudo_labels: torch.Tensor,
    true_labels: torch.Tensor | None,
    training: bool,
    warming_up: bool,
) -> tuple[torch.Tensor, dict[str, float]]: ...
def teacher_objective(
    settings: dict[str, Any], embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]: ...
def swav_objective(
    settings: dict[str, Any],
    prototypes: torch.Tensor,
    embeddings: list[torch.Tensor],
    frozen: bool,
) -> torch.Tensor: ...
