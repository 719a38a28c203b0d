"""Serving: ``capsat serve`` (an OpenAI-compatible routing proxy), the Python ``Controller``,
``capsat calibrate`` and ``capsat aptitude run``.

Nothing heavy loads on import: fastapi, uvicorn and openai load when a server or a backend
call first needs them.
"""
import importlib

_LAZY = {"Controller": "controller", "RequestError": "controller", "ServeConfig": "config",
         "load_backends": "config", "create_app": "app", "serve": "app",
         "AppendLog": "decisions", "calibrate": "calibrate",
         "load_aptitude_items": "aptitude_run", "run_aptitude": "aptitude_run"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
