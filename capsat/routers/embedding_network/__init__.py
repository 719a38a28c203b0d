"""Shared base of the routers that are a torch network over the query embedding (mf, irt,
multilabel); it registers no router itself."""
from .config import NetworkConfig

__all__ = ["NetworkConfig"]
