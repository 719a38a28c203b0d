"""Routing metrics, registered by name (lm-evaluation-harness style). The registry *is* the list
``capsat eval`` computes: a metric registered here appears in ``results.json`` and, when it
has a ``column``, in every table.

Every metric is called with keyword arguments: ``probs`` (the router's P(correct)) and
``scores`` (true scores in [0, 1]), aligned query x model matrices, and, where the data has
them, ``costs`` (the true cost of each call), ``expected_costs`` (per-model costs known before
the call: training means), ``tasks`` (one per query) and ``reference`` (the reference values
of the run: best single model, per-task best single model, oracle). A metric names what it
``needs``; it is left out (None) where the run does not have it.

Graded scores count as correct at >= 0.5 for the AUCs; log-loss and ECE use the graded score
as a soft target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

EPS = 1e-6
CORRECT_AT = 0.5
INPUTS = ("costs", "expected_costs", "tasks", "reference")


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., object]
    help: str
    higher_is_better: bool = True
    needs: tuple[str, ...] = ()
    column: str | None = None  # short table header; None: in results.json only

    def applies(self, available: dict) -> bool:
        return all(available.get(need) is not None for need in self.needs)


METRICS: dict[str, Metric] = {}


def register_metric(name: str, help: str, higher_is_better: bool = True, *,
                    needs: tuple[str, ...] = (), column: str | None = None):
    unknown = set(needs) - set(INPUTS)
    if unknown:
        raise ValueError(f"metric {name!r} needs unknown input(s) {sorted(unknown)}; known: "
                         f"{INPUTS}")

    def wrap(fn):
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = Metric(name, fn, help, higher_is_better, tuple(needs), column)
        return fn
    return wrap


def compute_metrics(probs: np.ndarray, scores: np.ndarray, **inputs) -> dict:
    """Every registered metric that applies, by name (in registration order)."""
    unknown = set(inputs) - set(INPUTS)
    if unknown:
        raise TypeError(f"unknown metric input(s) {sorted(unknown)}")
    out = {}
    for name, metric in METRICS.items():
        if metric.applies(inputs):
            value = metric.fn(probs, scores, **inputs)
            if isinstance(value, float) and np.isnan(value):
                value = None
            out[name] = value
    return out


def chosen(probs: np.ndarray) -> np.ndarray:
    """Index of the routed model per query (ties: the first, i.e. the pool order)."""
    return np.argmax(probs, axis=1)


def _picked(matrix: np.ndarray, choice: np.ndarray) -> np.ndarray:
    return matrix[np.arange(len(choice)), choice]


def _binary_auc(labels: np.ndarray, values: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, values))


@register_metric("routed_accuracy", "mean score of the model the router picks (argmax P)",
                 column="acc")
def routed_accuracy(probs, scores, **_):
    return float(_picked(scores, chosen(probs)).mean())


def gap_closed(router_accuracy: float, reference_accuracy: float, oracle: float) -> float:
    """(router - reference) / (oracle - reference): 0 = no better than the reference, 1 =
    the oracle."""
    if oracle - reference_accuracy <= 0:
        return float("nan")
    return (router_accuracy - reference_accuracy) / (oracle - reference_accuracy)


@register_metric("gap_closed", "(routed accuracy - best single) / (oracle - best single); best "
                               "single = the best model on train", needs=("reference",),
                 column="gap")
def gap_closed_best_single(probs, scores, reference=None, **_):
    return gap_closed(routed_accuracy(probs, scores), reference["best_single"],
                      reference["oracle"])


@register_metric("gap_closed_per_task", "the same gap against the per-task best single model "
                                        "(each task sent to its best model on train)",
                 needs=("reference",), column="gap/task")
def gap_closed_per_task(probs, scores, reference=None, **_):
    return gap_closed(routed_accuracy(probs, scores), reference["per_task_best_single"],
                      reference["oracle"])


@register_metric("auc", "ROC AUC of P(correct) over all (query, model) pairs", column="AUC")
def auc(probs, scores, **_):
    return _binary_auc((scores.ravel() >= CORRECT_AT).astype(int), probs.ravel())


def query_aucs(probs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per query, P(a right candidate out-scores a wrong one), ties counting half; NaN where
    every candidate is right or every one is wrong."""
    right = scores >= CORRECT_AT
    out = np.full(len(scores), np.nan)
    mixed = right.any(axis=1) & ~right.all(axis=1)
    for start in range(0, len(scores), 4096):  # bounded memory: (block, m, m)
        rows = np.flatnonzero(mixed[start:start + 4096]) + start
        if not len(rows):
            continue
        p, y = probs[rows], right[rows]
        above = ((p[:, :, None] > p[:, None, :]).astype(float)
                 + 0.5 * (p[:, :, None] == p[:, None, :]))
        pairs = y[:, :, None] & ~y[:, None, :]
        out[rows] = (above * pairs).sum(axis=(1, 2)) / pairs.sum(axis=(1, 2))
    return out


@register_metric("query_auc", "AUC among the candidates of each query (right vs wrong ones), "
                              "averaged over the queries where some but not all are right: the "
                              "ranking routing uses", column="qAUC")
def query_auc(probs, scores, **_):
    values = query_aucs(probs, scores)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


@register_metric("log_loss", "cross-entropy of P(correct) against the (graded) score, per pair",
                 higher_is_better=False, column="logloss")
def log_loss(probs, scores, **_):
    return float(pair_log_losses(probs, scores).mean())


def pair_log_losses(probs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The cross-entropy of every (query, candidate) pair, graded scores as soft targets."""
    p = np.clip(probs, EPS, 1 - EPS)
    return -(scores * np.log(p) + (1 - scores) * np.log(1 - p))


@register_metric("ece", "expected calibration error, 10 equal-width bins over (query, model) "
                        "pairs", higher_is_better=False, column="ECE")
def ece(probs, scores, bins: int = 10, **_):
    p, y = probs.ravel(), scores.ravel()
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(p[mask].mean() - y[mask].mean())
    return float(total / len(p))


@register_metric("per_task", "routed accuracy per task", needs=("tasks",))
def per_task_accuracy(probs, scores, tasks=None, **_) -> dict[str, float]:
    """Routed accuracy within each task."""
    picked = _picked(scores, chosen(probs))
    tasks = np.asarray(tasks)
    return {t: float(picked[tasks == t].mean()) for t in sorted(set(tasks.tolist()))}


@register_metric("routed_cost", "mean true cost per query of the picked models (argmax P)",
                 higher_is_better=False, needs=("costs",), column="cost")
def routed_cost(probs, scores, costs=None, **_):
    return float(_picked(costs, chosen(probs)).mean())


@register_metric("cost_curve_area", "mean accuracy of the accuracy-cost curve over the range "
                                    "from the cheapest to the dearest single model",
                 needs=("costs", "expected_costs"), column="curve")
def cost_curve_area_metric(probs, scores, costs=None, expected_costs=None, **_):
    single = costs.mean(axis=0)
    return cost_curve_area(cost_curve(probs, scores, costs, expected_costs), single.min(),
                           single.max())


@register_metric("cost_to_reach_best_single", "lowest mean cost per query at which the "
                                              "accuracy-cost curve reaches the best single "
                                              "model's accuracy", higher_is_better=False,
                 needs=("costs", "expected_costs", "reference"), column="cost@best")
def cost_to_reach_best_single(probs, scores, costs=None, expected_costs=None, reference=None,
                              **_):
    return cost_to_reach(cost_curve(probs, scores, costs, expected_costs),
                         reference["best_single"])


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
