"""CapSAT: a small instruction LLM reads a candidate's capability soft tokens and an instruction
and answers whether that candidate can handle it.

Importing this package registers the ``capsat`` router and loads only its config; the torch
parts (base LLM, packing, network, router) load when one of their names is first used.
"""
import importlib

from ..routers.registry import register_router
from .config import DEFAULT_BASE_LLM, CapsatConfig

register_router("capsat", CapsatConfig, f"{__name__}.router:CapsatRouter",
                summary="the CapSAT router model (evaluate a trained one as capsat:PATH; "
                        "capsat:default is the shipped one)",
                trained_with="capsat train")

_LAZY = {
    "Candidate": "router", "CapsatRouter": "router",
    "embedded_gguf_path": "base_llm", "load_base_llm": "base_llm",
    "lora_target_modules": "base_llm", "yes_no_token_ids": "base_llm",
    "PackedBatch": "packing", "PackedOutput": "packing", "PackedSequence": "packing",
    "collate": "packing", "pack": "packing", "packed_forward": "packing",
}

__all__ = ["DEFAULT_BASE_LLM", "CapsatConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
