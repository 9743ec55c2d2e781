"""From a trained model to search: export (TorchScript, ONNX, safetensors, each with the
JSON that says how to feed it), embedding of image files, and the gallery index.

A service needs torch (or onnxruntime) and the exported file, not slade's extension:
:func:`load` reads an export back, and its JSON (:class:`ModelCard`) gives the
preprocessing a plain script can follow.
"""

from ..data.transforms import Preprocessing
from .embedding import Embeddings, embed
from .exporting import export, load
from .index import Index
from .model_card import ModelCard
from .networks import ConvNetEmbedding, ResNetEmbedding, to_torch
from .search import QueryResult, model_reference, search_images

__all__ = [
    "ConvNetEmbedding",
    "Embeddings",
    "Index",
    "ModelCard",
    "Preprocessing",
    "QueryResult",
    "ResNetEmbedding",
    "embed",
    "export",
    "load",
    "model_reference",
    "search_images",
    "to_torch",
]
