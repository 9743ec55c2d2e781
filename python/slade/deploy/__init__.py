"""Deployment: a searchable gallery of embeddings (:class:`Index`)."""

from .index import Index

__all__ = ["Index"]
