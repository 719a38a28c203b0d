"""Per-model prices for the cost-aware policies, and where they come from.

A price is either a cost per call (``per_call``: observed mean costs of an outcome table, or a
number in a ``--prices`` file) or token prices in USD per million tokens (``input_price`` /
``output_price``: CapSAT registry entries, model cards, or an object in a ``--prices`` file).
Token prices become a cost per row from the instruction's length: input tokens are estimated
as ceil(characters / CHARS_PER_TOKEN), output tokens are the assumed ``output_tokens``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from data_builders.errors import DataError
from data_builders.outcomes import OutcomeTable

#: Rough characters per token of English text (OpenAI's rule of thumb).
CHARS_PER_TOKEN = 4.0


@dataclass
class Prices:
    """Prices of the candidates, aligned with ``models``.

    ``per_call[j]`` is a fixed cost per call; ``input_price[j]`` / ``output_price[j]`` are USD
    per million tokens (then ``per_call`` is zero for that model). ``unit`` names the cost unit.
    """

    models: list[str]
    per_call: np.ndarray
    input_price: np.ndarray
    output_price: np.ndarray
    unit: str
    source: str
    output_tokens: int = 0

    def matrix(self, chars: np.ndarray) -> np.ndarray:
        """(rows x n_models) expected cost of calling each model on instructions of ``chars``
        characters each."""
        chars = np.asarray(chars, dtype=float)
        per_call = np.broadcast_to(self.per_call, (len(chars), len(self.models)))
        if not self.input_price.any() and not self.output_price.any():
            return np.array(per_call, dtype=float)
        tokens = np.ceil(chars / CHARS_PER_TOKEN)
        tokens_cost = (tokens[:, None] * self.input_price[None, :]
                       + self.output_tokens * self.output_price[None, :]) / 1e6
        return per_call + tokens_cost

    def to_json(self) -> dict:
        return {"source": self.source, "unit": self.unit, "output_tokens": self.output_tokens,
                "models": {m: {"per_call": float(self.per_call[j]),
                               "input_price": float(self.input_price[j]),
                               "output_price": float(self.output_price[j])}
                           for j, m in enumerate(self.models)}}

    @classmethod
    def from_json(cls, values: dict, models: Sequence[str]) -> "Prices":
        return cls(list(models),
                   np.array([values["models"][m]["per_call"] for m in models], dtype=float),
                   np.array([values["models"][m]["input_price"] for m in models], dtype=float),
                   np.array([values["models"][m]["output_price"] for m in models], dtype=float),
                   values["unit"], values["source"], int(values["output_tokens"]))


def _number(value, *, file: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or value < 0:
        raise DataError(f"a price must be a finite number >= 0, got {value!r}", file=file,
                        field=field)
    return float(value)


def from_entries(entries: dict, models: Sequence[str], *, source: str, unit: str,
                 output_tokens: int, file: str | None = None) -> Prices:
    """Prices from ``model -> number (per call) | {"input_price", "output_price"}``."""
    file = file or source
    missing = [m for m in models if m not in entries]
    if missing:
        raise DataError(f"no price for candidate(s) {missing}; priced: {sorted(entries)}",
                        file=file, field=missing[0])
    per_call, inp, out = [], [], []
    for m in models:
        entry = entries[m]
        if isinstance(entry, dict):
            for key in ("input_price", "output_price"):
                if key not in entry:
                    raise DataError(f"token prices need {key} (USD per million tokens)",
                                    file=file, field=f"{m}.{key}")
            per_call.append(0.0)
            inp.append(_number(entry["input_price"], file=file, field=f"{m}.input_price"))
            out.append(_number(entry["output_price"], file=file, field=f"{m}.output_price"))
        else:
            per_call.append(_number(entry, file=file, field=m))
            inp.append(0.0)
            out.append(0.0)
    if any(inp) or any(out):
        unit = "usd"
        if output_tokens <= 0:
            raise DataError("token prices need output_tokens > 0 (the assumed answer length)",
                            file=file, field="output_tokens")
    return Prices(list(models), np.array(per_call), np.array(inp), np.array(out), unit, source,
                  output_tokens if (any(inp) or any(out)) else 0)


def from_file(path: str, models: Sequence[str], output_tokens: int) -> Prices:
    """A JSON file: ``{model: cost_per_call}`` or ``{model: {input_price, output_price}}``;
    an optional top-level ``"cost_unit"`` names the unit of per-call numbers (default usd)."""
    try:
        values = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", file=path, line=err.lineno) from err
    if not isinstance(values, dict):
        raise DataError("expected an object mapping model -> price", file=path)
    unit = values.pop("cost_unit", "usd")
    return from_entries(values, models, source=path, unit=str(unit),
                        output_tokens=output_tokens, file=path)


def from_table(table: OutcomeTable, models: Sequence[str], output_tokens: int) -> Prices | None:
    """Mean observed cost per call of each model (the table's costs), else its model cards'
    token prices, else None."""
    missing = [m for m in models if m not in table.models]
    if missing:
        raise DataError(f"candidate(s) {missing} are not in {table.name!r}; it has "
                        f"{table.models}", field="model")
    if table.costs is not None:
        means = table.costs[list(models)].mean(axis=0, skipna=True)
        if means.isna().any():
            raise DataError(f"{table.name!r} has no cost for {list(means.index[means.isna()])}",
                            field="cost")
        return from_entries({m: float(means[m]) for m in models}, models,
                            source=f"mean cost per call in {table.name}",
                            unit=table.cost_unit or "usd", output_tokens=output_tokens)
    cards = {m: table.model_info.get(m, {}) for m in models}
    if all("input_price" in c and "output_price" in c for c in cards.values()):
        return from_entries({m: {"input_price": c["input_price"],
                                 "output_price": c["output_price"]} for m, c in cards.items()},
                            models, source=f"model cards of {table.name}", unit="usd",
                            output_tokens=output_tokens)
    return None


def from_router(router, models: Sequence[str], output_tokens: int) -> Prices | None:
    """Prices from a CapSAT router's candidate registry, when every candidate has one: token
    prices (model cards), else the mean cost per call on its training data (in that data's
    cost unit)."""
    candidates = getattr(router, "candidates", None)
    if not isinstance(candidates, dict):
        return None
    prices = {m: getattr(candidates.get(m), "price", None) or {} for m in models}
    if all("input_price" in p and "output_price" in p for p in prices.values()):
        return from_entries({m: {"input_price": p["input_price"],
                                 "output_price": p["output_price"]}
                             for m, p in prices.items()}, models,
                            source="router registry", unit="usd", output_tokens=output_tokens)
    if all("mean_cost_per_call" in p for p in prices.values()):
        units = {p.get("cost_unit", "usd") for p in prices.values()}
        if len(units) != 1:
            raise DataError(f"the router's candidates price calls in different units {units}",
                            field="price")
        return from_entries({m: p["mean_cost_per_call"] for m, p in prices.items()}, models,
                            source="router registry (mean cost per call on its training data)",
                            unit=units.pop(), output_tokens=output_tokens)
    return None
