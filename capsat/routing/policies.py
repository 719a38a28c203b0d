"""Cost-aware routing policies over P(correct) and per-row expected costs.

- ``max-accuracy``: argmax P (ties: the first candidate in pool order).
- ``tradeoff:LAMBDA``: argmax P - LAMBDA * cost (LAMBDA = accuracy given up per unit of cost).
- ``threshold:T``: the cheapest candidate whose P clears T (ties: higher P, then pool order);
  when none does, the max-P candidate.
- ``budget:B``: a total budget for the whole log. It is the tradeoff policy at the dual price
  LAMBDA* = the smallest LAMBDA whose total expected cost is <= B (the spend is monotone in
  LAMBDA, so bisection finds it); B below the all-cheapest spend is infeasible and reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from data_builders.errors import DataError

POLICY_KINDS = ("max-accuracy", "tradeoff", "threshold", "budget")


@dataclass(frozen=True)
class Policy:
    kind: str
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Policy":
        kind, _, value = str(text).strip().partition(":")
        if kind not in POLICY_KINDS:
            raise DataError(f"unknown policy {text!r}; known: max-accuracy, tradeoff:LAMBDA, "
                            f"threshold:T, budget:B", field="policy")
        if kind == "max-accuracy":
            if value:
                raise DataError("max-accuracy takes no value", field="policy")
            return cls(kind)
        try:
            number = float(value)
        except ValueError:
            raise DataError(f"{kind} needs a number, e.g. {kind}:0.5; got {text!r}",
                            field="policy") from None
        if not math.isfinite(number) or number < 0 or (kind == "threshold" and number > 1):
            raise DataError(f"{kind} value must be {'in [0, 1]' if kind == 'threshold' else '>= 0'}"
                            f", got {number}", field="policy")
        return cls(kind, number)

    @property
    def needs_costs(self) -> bool:
        return self.kind != "max-accuracy"

    def __str__(self) -> str:
        return self.kind if self.kind == "max-accuracy" else f"{self.kind}:{self.value:g}"


def tradeoff_choice(probs: np.ndarray, costs: np.ndarray, lam: float) -> np.ndarray:
    return np.argmax(probs - lam * costs, axis=1) if lam else np.argmax(probs, axis=1)


def threshold_choice(probs: np.ndarray, costs: np.ndarray, threshold: float) -> np.ndarray:
    n, m = probs.shape
    clears = probs >= threshold
    # lexsort keys: pool order, then -P, then cost (last key is primary); masked costs = inf.
    masked = np.where(clears, costs, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(m), (n, m)), -probs, masked), axis=1)
    cheapest = order[:, 0]
    return np.where(clears.any(axis=1), cheapest, np.argmax(probs, axis=1))


def choose(policy: Policy, probs: np.ndarray, costs: np.ndarray | None,
           lam: float | None = None) -> np.ndarray:
    """Candidate index per row. ``lam``: the solved dual price of a budget policy."""
    if policy.kind == "max-accuracy":
        return np.argmax(probs, axis=1)
    if costs is None:
        raise DataError(f"policy {policy} needs prices; give --prices (or fit on data with "
                        f"costs / model cards)", field="prices")
    if policy.kind == "tradeoff":
        return tradeoff_choice(probs, costs, policy.value)
    if policy.kind == "threshold":
        return threshold_choice(probs, costs, policy.value)
    if lam is None:
        raise ValueError("a budget policy needs its solved dual price (solve_budget)")
    return tradeoff_choice(probs, costs, lam)


@dataclass
class BudgetSolution:
    budget: float
    lam: float
    spend: float
    feasible: bool
    iterations: int

    def to_json(self) -> dict:
        return {"budget": self.budget, "dual_price": self.lam, "spend": self.spend,
                "feasible": self.feasible, "bisection_passes": self.iterations}


def solve_budget(spend_at: Callable[[float], float], budget: float, cost_spread: float,
                 max_passes: int = 60, rel_tol: float = 1e-4) -> BudgetSolution:
    """Smallest dual price whose total expected cost fits ``budget``.

    ``spend_at(lam)``: total expected cost of the tradeoff choice at ``lam`` (one pass over the
    log, non-increasing in ``lam``). ``cost_spread``: a typical cost difference between
    candidates, scaling the search. Returns the upper end of the bracket, so spend <= budget
    whenever the budget is feasible.
    """
    passes = 1
    spend0 = spend_at(0.0)
    if spend0 <= budget:
        return BudgetSolution(budget, 0.0, spend0, True, passes)
    lo, hi = 0.0, 1.0 / max(cost_spread, 1e-300)
    spend_hi = spend_at(hi)
    passes += 1
    # Grow until the spend fits; at a large enough price every row takes its cheapest model.
    while spend_hi > budget and passes < max_passes // 2:
        lo, hi = hi, hi * 16
        spend_hi = spend_at(hi)
        passes += 1
    if spend_hi > budget:
        return BudgetSolution(budget, hi, spend_hi, False, passes)
    while passes < max_passes and (hi - lo) > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        spend = spend_at(mid)
        passes += 1
        if spend <= budget:
            hi, spend_hi = mid, spend
        else:
            lo = mid
    return BudgetSolution(budget, hi, spend_hi, True, passes)
