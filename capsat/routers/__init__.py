"""Routers behind one interface, and the registry that names them.

Importing this package registers every built-in router.
"""
from .base import Queries, Router, RouterConfig, as_queries, help_field
from .registry import ROUTERS, get_router_class, make_router, register_router
from . import baselines  # noqa: F401  (registers random, best_single, oracle)

__all__ = ["Queries", "Router", "RouterConfig", "ROUTERS", "as_queries", "get_router_class",
           "help_field", "make_router", "register_router"]
