"""What ``capsat serve`` reads: its options (``ServeConfig``) and the backends file.

The backends file (YAML) names, for every candidate the router may pick, where it is served
and what it costs::

    output_tokens: 256            # assumed answer length, for token prices (optional)
    models:
      gemma-7b:                   # a candidate name the router knows
        base_url: http://127.0.0.1:8001/v1
        model: google/gemma-7b-it # the backend's own model name
        api_key_env: GEMMA_KEY    # optional: the environment variable holding its key
        input_price: 0.1          # USD per million tokens (or cost_per_call: 0.002)
        output_price: 0.2
        timeout: 30               # seconds (default 60)

Every error names the file, the line and the key (``backends.yaml, line 7, field
'models.gpt.timeout'``), found by walking the YAML node tree, which keeps line marks.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np
import yaml

from data_builders.errors import DataError

from ..routers.base import help_field
from ..routing import prices as P

DEFAULT_TIMEOUT = 60.0
DEFAULT_OUTPUT_TOKENS = 256
TOP_KEYS = ("models", "output_tokens")
PRICE_KEYS = ("cost_per_call", "input_price", "output_price")
BACKEND_KEYS = ("base_url", "model", "api_key_env", "timeout", *PRICE_KEYS)


@dataclass
class ServeConfig:
    """``capsat serve``'s options (each field is a flag: ``budget_window`` is
    ``--budget-window``)."""

    router: str = help_field("", "saved router folder, 'default' (the shipped CapSAT router) or "
                                 "a hub id")
    backends: str = help_field("", "YAML file: per candidate its base_url, model, api_key_env, "
                                   "prices and timeout")
    policy: str = help_field("max-accuracy", "default policy: max-accuracy | tradeoff:LAMBDA | "
                                             "threshold:T (a request's model field may name "
                                             "another: capsat:threshold=0.7)")
    host: str = help_field("127.0.0.1", "address to bind; anything but localhost needs "
                                        "--api-key-env")
    port: int = help_field(8000, "port to listen on")
    api_key_env: str = help_field("", "environment variable holding the key clients must send "
                                      "as 'Authorization: Bearer KEY'")
    decision_log: str = help_field("", "append-only JSONL of every decision (readable by "
                                       "capsat route)")
    log_prompts: bool = help_field(False, "also log each request's routed instruction (field "
                                          "'instruction'); off by default")
    budget: float = help_field(0.0, "spend budget per --budget-window in the prices' unit "
                                    "(0: none)")
    budget_window: float = help_field(3600.0, "length of a budget window in seconds")
    max_tries: int = help_field(3, "backends tried per request (the chosen one, then the "
                                   "next best) before the client gets an error")
    max_body_bytes: int = help_field(1_000_000, "larger request bodies are refused (413)")
    batch_window_ms: float = help_field(2.0, "micro-batching: wait this long for more requests "
                                             "to score together")
    batch_max_size: int = help_field(32, "micro-batching: at most this many requests per "
                                         "predict_proba call (1: off)")
    affinity_size: int = help_field(10_000, "conversations remembered for model affinity (LRU)")

    def check(self) -> None:
        """Safe defaults and sane numbers, before anything is loaded."""
        if not self.router:
            raise DataError("give the router to serve", field="router")
        if not self.backends:
            raise DataError("give the backends file", field="backends")
        if not is_loopback(self.host) and not self.api_key_env:
            raise DataError(f"binding to {self.host!r} exposes the server beyond this machine: "
                            f"give --api-key-env (clients then send 'Authorization: Bearer "
                            f"KEY')", field="host")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise DataError(f"environment variable {self.api_key_env} is not set",
                            field="api_key_env")
        for name, low in (("max_tries", 1), ("batch_max_size", 1), ("affinity_size", 1),
                          ("max_body_bytes", 1)):
            if getattr(self, name) < low:
                raise DataError(f"must be >= {low}", field=name)
        for name in ("budget", "budget_window", "batch_window_ms"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise DataError(f"must be a finite number >= 0, got {value}", field=name)
        if self.budget and not self.budget_window:
            raise DataError("a budget needs a window > 0 seconds", field="budget_window")
        if self.log_prompts and not self.decision_log:
            raise DataError("--log-prompts needs --decision-log", field="log_prompts")


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def add_arguments(parser: argparse.ArgumentParser, klass, required: Sequence[str] = ()) -> None:
    """One flag per dataclass field, with the field's help text and default."""
    for f in dataclasses.fields(klass):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        shown = f" (default {f.default!r})" if f.default not in ("", None) else ""
        parser.add_argument(flag, dest=f.name, type=kind, default=f.default,
                            required=f.name in required, help=help_text + shown)


def from_args(klass, args):
    return klass(**{f.name: getattr(args, f.name) for f in dataclasses.fields(klass)})


# ------------------------------------------------------------------ backends file
@dataclass
class Backend:
    """One candidate's backend: an OpenAI-compatible endpoint."""

    name: str = help_field("", "the candidate's name, as the router knows it")
    base_url: str = help_field("", "the endpoint's base URL, e.g. http://127.0.0.1:8001/v1")
    model: str = help_field("", "the backend's own name of the model")
    api_key_env: str = help_field("", "environment variable holding the backend's key")
    timeout: float = help_field(DEFAULT_TIMEOUT, "seconds before a call counts as failed")

    def api_key(self) -> str:
        # The openai client insists on a key; local servers ignore it.
        return os.environ.get(self.api_key_env, "") if self.api_key_env else "unused"


@dataclass
class Backends:
    path: str
    backends: dict[str, Backend]  # in file order
    prices: P.Prices  # aligned with ``models``
    output_tokens: int

    @property
    def models(self) -> list[str]:
        return list(self.backends)

    def expected_costs(self, chars: float) -> np.ndarray:
        """Expected cost of one call to each candidate for a request of ``chars`` characters."""
        return self.prices.matrix(np.array([float(chars)]))[0]

    def call_cost(self, model: str, prompt_tokens: int | None, completion_tokens: int | None,
                  chars: float) -> float:
        """What a finished call cost: token prices on the backend's reported usage (the
        estimate when it reports none), or the price per call."""
        j = self.models.index(model)
        prices = self.prices
        if prompt_tokens is None or completion_tokens is None or not (
                prices.input_price[j] or prices.output_price[j]):
            return float(self.expected_costs(chars)[j])
        return float(prices.per_call[j] + (prompt_tokens * prices.input_price[j]
                                           + completion_tokens * prices.output_price[j]) / 1e6)


def _yaml_with_lines(path: str) -> tuple[object, dict[str, int]]:
    """The document and, for every key path ('models.gpt.timeout'), the line it is on."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("no such file", file=path) from None
    loader = yaml.SafeLoader(text)
    lines: dict[str, int] = {}

    def walk(node, key: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = f"{key}.{key_node.value}" if key else str(key_node.value)
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[f"{key}[{i}]"] = item.start_mark.line + 1
                walk(item, f"{key}[{i}]")

    try:
        node = loader.get_single_node()
        if node is None:
            raise DataError("the file is empty", file=path)
        lines[""] = node.start_mark.line + 1
        walk(node, "")
        return loader.construct_document(node), lines
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise DataError(f"invalid YAML: {getattr(err, 'problem', None) or err}", file=path,
                        line=None if mark is None else mark.line + 1) from None
    finally:
        loader.dispose()


def load_backends(path: str, router_models: Sequence[str]) -> Backends:
    """Read and check the backends file against the router's candidates."""
    data, lines = _yaml_with_lines(path)

    def error(message: str, key: str) -> DataError:
        return DataError(message, file=path, line=lines.get(key, lines.get("")), field=key)

    if not isinstance(data, dict):
        raise error("expected a mapping with a 'models' key", "")
    for key in data:
        if key not in TOP_KEYS:
            raise error(f"unknown key; known: {list(TOP_KEYS)}", str(key))
    output_tokens = data.get("output_tokens", DEFAULT_OUTPUT_TOKENS)
    if isinstance(output_tokens, bool) or not isinstance(output_tokens, int) or output_tokens < 1:
        raise error(f"must be an integer >= 1, got {output_tokens!r}", "output_tokens")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise error("'models' must map each candidate name to its backend", "models")
    backends, entries = {}, {}
    for name, values in models.items():
        key = f"models.{name}"
        if str(name) not in router_models:
            raise error(f"the router does not know candidate {name!r}; it knows "
                        f"{list(router_models)}", key)
        name = str(name)
        if not isinstance(values, dict):
            raise error("expected a mapping (base_url, model, prices, ...)", key)
        for field in values:
            if field not in BACKEND_KEYS:
                raise error(f"unknown key; known: {list(BACKEND_KEYS)}", f"{key}.{field}")
        for field in ("base_url", "model"):
            if not isinstance(values.get(field), str) or not values[field].strip():
                raise error("required: a non-empty string", f"{key}.{field}")
        url = urlparse(values["base_url"])
        if url.scheme not in ("http", "https") or not url.netloc:
            raise error(f"expected an http(s) URL, got {values['base_url']!r}",
                        f"{key}.base_url")
        key_env = values.get("api_key_env", "")
        if not isinstance(key_env, str):
            raise error("must be the name of an environment variable", f"{key}.api_key_env")
        if key_env and not os.environ.get(key_env):
            raise error(f"environment variable {key_env} is not set", f"{key}.api_key_env")
        timeout = values.get("timeout", DEFAULT_TIMEOUT)
        if not _positive(timeout):
            raise error(f"must be a number of seconds > 0, got {timeout!r}", f"{key}.timeout")
        entries[name] = _price_entry(values, key, error)
        backends[name] = Backend(name, values["base_url"].rstrip("/"), values["model"], key_env,
                                 float(timeout))
    try:
        prices = P.from_entries(entries, list(backends), source=path, unit="usd",
                                output_tokens=output_tokens, file=path)
    except DataError as err:  # cannot happen after the checks above; keep the line anyway
        raise error(err.reason, f"models.{err.field}") from None
    return Backends(path, backends, prices, output_tokens)


def _price_entry(values: dict, key: str, error):
    """The ``prices.from_entries`` form of one backend's prices: a number or a token pair."""
    given = [k for k in PRICE_KEYS if k in values]
    if given == ["cost_per_call"]:
        if not _non_negative(values["cost_per_call"]):
            raise error(f"must be a number >= 0, got {values['cost_per_call']!r}",
                        f"{key}.cost_per_call")
        return float(values["cost_per_call"])
    if sorted(given) == ["input_price", "output_price"]:
        for field in given:
            if not _non_negative(values[field]):
                raise error(f"must be a number >= 0 (USD per million tokens), got "
                            f"{values[field]!r}", f"{key}.{field}")
        return {"input_price": float(values["input_price"]),
                "output_price": float(values["output_price"])}
    raise error("give either cost_per_call or both input_price and output_price (USD per "
                f"million tokens); got {given or 'none'}", key)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _positive(value) -> bool:
    return _number(value) and value > 0


def _non_negative(value) -> bool:
    return _number(value) and value >= 0
