"""capsat: predict which candidate LLM answers an instruction correctly, and route to it."""
from . import capsat_model  # noqa: F401  (registers the CapSAT router)
from .routers import ROUTERS, Queries, Router, get_router_class, make_router

__version__ = "0.1.0"
__all__ = ["ROUTERS", "Controller", "Queries", "Router", "get_router_class", "make_router",
           "__version__"]


def __getattr__(name: str):
    # The Controller (serving) loads on first use: `import capsat` stays free of fastapi,
    # openai and torch.
    if name == "Controller":
        from .serving.controller import Controller

        return Controller
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
