"""Routers behind one interface, and the registry that names them.

One package per router (``config.py`` and ``router.py``); each package's ``__init__``
registers its routers explicitly. Importing this package imports configs only, never torch.
The CapSAT router registers itself from ``capsat.capsat_model``.
"""
from . import (  # noqa: F401
               aptitude_prior,
               baselines,
               classifier,
               irt,
               kmeans,
               knn,
               knn_aptitude,
               mf,
               multilabel,
               smoothie,
)
from .base import EmbeddingConfig, Queries, Router, RouterConfig, as_queries, help_field
from .registry import (
               ROUTERS,
               RouterEntry,
               get_router_class,
               make_router,
               register_router,
)

__all__ = ["EmbeddingConfig", "Queries", "Router", "RouterConfig", "RouterEntry", "ROUTERS",
           "as_queries", "get_router_class", "help_field", "make_router", "register_router"]
