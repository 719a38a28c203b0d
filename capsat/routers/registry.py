"""Name -> router table (RouteLLM style), filled by explicit registration.

Each router package calls ``register_router(name, ConfigClass, "module:Class")`` in its
``__init__``, beside its config (as peft's ``register_peft_method`` does). The router class is
named by its import path and imported only when it is asked for, so listing routers and their
options (``capsat ls``) imports no torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Router, RouterConfig


@dataclass(frozen=True)
class RouterEntry:
    name: str
    config_class: type["RouterConfig"]
    target: str  # "package.module:ClassName"
    summary: str
    #: How a router of this kind is made when not by fitting it in ``capsat eval`` (CapSAT:
    #: "capsat train"); its options are then that command's, not ``--router-args``.
    trained_with: str = ""

    def load(self) -> type["Router"]:
        module_name, _, class_name = self.target.partition(":")
        klass = getattr(importlib.import_module(module_name), class_name)
        if getattr(klass, "name", None) != self.name:
            raise TypeError(f"{self.target} is registered as {self.name!r} but its name is "
                            f"{getattr(klass, 'name', None)!r}")
        if klass.config_class is not self.config_class:
            raise TypeError(f"{self.target}: config_class {klass.config_class.__name__} is not "
                            f"the registered {self.config_class.__name__}")
        return klass


ROUTERS: dict[str, RouterEntry] = {}


def register_router(name: str, config_class: type["RouterConfig"], target: str, *,
                    summary: str, trained_with: str = "") -> RouterEntry:
    """Add a router under ``name``; ``target`` is its class as ``"module:Class"``."""
    if ":" not in target:
        raise ValueError(f"target must be 'module:Class', got {target!r}")
    entry = RouterEntry(name, config_class, target, summary, trained_with)
    if name in ROUTERS and ROUTERS[name] != entry:
        raise ValueError(f"router name {name!r} is taken by {ROUTERS[name].target}")
    ROUTERS[name] = entry
    return entry


def unknown_router(name: str) -> KeyError:
    return KeyError(f"unknown router {name!r}; known: {', '.join(sorted(ROUTERS))}")


def get_router_class(name: str) -> type["Router"]:
    try:
        entry = ROUTERS[name]
    except KeyError:
        raise unknown_router(name) from None
    return entry.load()


def make_router(name: str, **config) -> "Router":
    """A new, unfitted router by registry name, with config overrides."""
    return get_router_class(name)(**config)
