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
) -> dict[str, float]: ...
