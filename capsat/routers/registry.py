"""Name -> router class table (RouteLLM style). Router modules register themselves on import."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Router

ROUTERS: dict[str, type["Router"]] = {}


def register_router(cls: type["Router"]) -> type["Router"]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__name__} has no name")
    if name in ROUTERS and ROUTERS[name] is not cls:
        raise ValueError(f"router name {name!r} is taken by {ROUTERS[name].__name__}")
    ROUTERS[name] = cls
    return cls


def get_router_class(name: str) -> type["Router"]:
    try:
        return ROUTERS[name]
    except KeyError:
        raise KeyError(f"unknown router {name!r}; known: {', '.join(sorted(ROUTERS))}") from None


def make_router(name: str, **config) -> "Router":
    """A new, unfitted router by registry name, with config overrides."""
    return get_router_class(name)(**config)
