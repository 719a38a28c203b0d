"""Routing metrics, registered by name (lm-evaluation-harness style).

Inputs are aligned query x model matrices: ``probs`` (the router's P(correct)), ``scores``
(true scores in [0, 1]), and optionally ``costs`` (the true cost of each call). Graded scores
count as correct at >= 0.5 for AUC; log-loss and ECE use the graded score as a soft target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

EPS = 1e-6


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., float]
    help: str
    higher_is_better: bool = True


METRICS: dict[str, Metric] = {}


def register_metric(name: str, help: str, higher_is_better: bool = True):
    def wrap(fn):
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = Metric(name, fn, help, higher_is_better)
        return fn
    return wrap


def chosen(probs: np.ndarray) -> np.ndarray:
    """Index of the routed model per query (ties: the first, i.e. the pool order)."""
    return np.argmax(probs, axis=1)


def _picked(matrix: np.ndarray, choice: np.ndarray) -> np.ndarray:
    return matrix[np.arange(len(choice)), choice]


@register_metric("routed_accuracy", "mean score of the model the router picks (argmax P)")
def routed_accuracy(probs, scores, **_):
    return float(_picked(scores, chosen(probs)).mean())


@register_metric("auc", "ROC AUC of P(correct) over all (query, model) pairs")
def auc(probs, scores, **_):
    labels = (scores.ravel() >= 0.5).astype(int)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, probs.ravel()))


@register_metric("log_loss", "cross-entropy of P(correct) against the (graded) score, per pair",
                 higher_is_better=False)
def log_loss(probs, scores, **_):
    p = np.clip(probs.ravel(), EPS, 1 - EPS)
    y = scores.ravel()
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


@register_metric("ece", "expected calibration error, 10 equal-width bins over (query, model) "
                        "pairs", higher_is_better=False)
def ece(probs, scores, bins: int = 10, **_):
    p, y = probs.ravel(), scores.ravel()
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(p[mask].mean() - y[mask].mean())
    return float(total / len(p))


@register_metric("routed_cost", "mean true cost per query of the picked models (argmax P)",
                 higher_is_better=False)
def routed_cost(probs, scores, costs=None, **_):
    if costs is None:
        return float("nan")
    return float(_picked(costs, chosen(probs)).mean())


def gap_closed(router_accuracy: float, best_single: float, oracle: float) -> float:
    """(router - best single) / (oracle - best single): 0 = no better than one model, 1 = oracle."""
    if oracle - best_single <= 0:
        return float("nan")
    return (router_accuracy - best_single) / (oracle - best_single)


def per_task_accuracy(probs, scores, tasks) -> dict[str, float]:
    picked = _picked(scores, chosen(probs))
    tasks = np.asarray(tasks)
    return {t: float(picked[tasks == t].mean()) for t in sorted(set(tasks.tolist()))}


# ---------------------------------------------------------------- cost curves
def cost_curve(probs: np.ndarray, scores: np.ndarray, costs: np.ndarray,
               expected_costs: np.ndarray, n_points: int = 60) -> np.ndarray:
    """Accuracy against mean true cost as willingness to pay sweeps from free to priceless.

    The router picks argmax P - lam * expected_cost (``expected_costs``: per-model costs known
    before the call, e.g. training means); the curve reports the *true* cost of the picks.
    Returns an (k, 2) array of (cost, accuracy), sorted by cost.
    """
    spread = np.ptp(expected_costs)
    if spread <= 0:
        choice = chosen(probs)
        return np.array([[_picked(costs, choice).mean(), _picked(scores, choice).mean()]])
    # lam * spread from 1e-3 to 1e3 covers "P dominates" to "cost dominates".
    lams = np.concatenate([[0.0], np.logspace(-3, 3, n_points - 1)]) / spread
    points = []
    for lam in lams:
        choice = np.argmax(probs - lam * expected_costs[None, :], axis=1)
        points.append((_picked(costs, choice).mean(), _picked(scores, choice).mean()))
    points = np.array(sorted(set(points)))
    return points


def upper_envelope(points: np.ndarray) -> np.ndarray:
    """Keep the points not dominated by a cheaper, at-least-as-accurate one."""
    out, best = [], -np.inf
    for cost, acc in points[np.argsort(points[:, 0], kind="stable")]:
        if acc > best:
            out.append((cost, acc))
            best = acc
    return np.array(out)


def cost_curve_area(curve: np.ndarray, low: float, high: float) -> float:
    """Mean accuracy over the cost range [low, high] (the cheapest to the dearest single model),
    with the curve's upper envelope held flat after its last point and zero before its first."""
    if high <= low:
        return float("nan")
    env = upper_envelope(curve)
    grid = np.linspace(low, high, 512)
    idx = np.searchsorted(env[:, 0], grid, side="right") - 1
    acc = np.where(idx >= 0, env[np.clip(idx, 0, None), 1], 0.0)
    return float(acc.mean())


def cost_to_reach(curve: np.ndarray, target_accuracy: float) -> float | None:
    """Lowest cost on the curve at which accuracy reaches ``target_accuracy`` (None: never)."""
    ok = curve[curve[:, 1] >= target_accuracy - 1e-12]
    return float(ok[:, 0].min()) if len(ok) else None
