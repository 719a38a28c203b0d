"""capsat: predict which candidate LLM answers an instruction correctly, and route to it."""
from . import capsat_model  # noqa: F401  (registers the CapSAT router)
from .routers import ROUTERS, Queries, Router, get_router_class, make_router

__version__ = "0.1.0"
__all__ = ["ROUTERS", "Queries", "Router", "get_router_class", "make_router", "__version__"]
