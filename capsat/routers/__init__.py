"""Routers behind one interface, and the registry that names them.

Importing this package imports every module in it, and each router module registers its
classes with ``@register_router``; so adding a router is adding one module.
"""
import importlib
import pkgutil

from .base import EmbeddingConfig, Queries, Router, RouterConfig, as_queries, help_field
from .registry import ROUTERS, get_router_class, make_router, register_router

_INFRASTRUCTURE = {"base", "common", "registry", "neural"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["EmbeddingConfig", "Queries", "Router", "RouterConfig", "ROUTERS", "as_queries",
           "get_router_class", "help_field", "make_router", "register_router"]
