"""Paired comparisons of routers on the same test queries: the difference of a per-query
figure (realised score, query AUC), and of the pooled AUC over every (query, candidate)
pair, with a paired bootstrap 95% interval.

A single split's difference is an anecdote unless its interval says otherwise: queries are
resampled with replacement, the same queries for both routers, and the interval is the
2.5th to 97.5th percentile of the resampled differences.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def paired_bootstrap(a: Sequence[float | None], b: Sequence[float | None], *,
                     samples: int = 2000, seed: int = 0) -> dict:
    """mean(a - b) over the queries where both have a value, with its paired bootstrap 95%
    interval and the share of resamples where a beats b."""
    a = np.array([np.nan if v is None else v for v in a], dtype=float)
    b = np.array([np.nan if v is None else v for v in b], dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same queries: {a.shape} vs {b.shape}")
    both = ~np.isnan(a) & ~np.isnan(b)
    diff = a[both] - b[both]
    if not len(diff):
        return {"difference": None, "low": None, "high": None, "queries": 0}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(axis=1)
    return {"difference": float(diff.mean()), "low": float(np.percentile(means, 2.5)),
            "high": float(np.percentile(means, 97.5)),
            "share_above_zero": float((means > 0).mean()), "queries": int(len(diff))}


class WeightedPooledAuc:
    """The pooled AUC of one router's (query, candidate) probabilities under query weights
    (a bootstrap resample's multiplicities): pairs are sorted once, so each resample costs
    one pass (ties count half, as ``roc_auc_score``)."""

    def __init__(self, probs: np.ndarray, right: np.ndarray):
        flat = probs.ravel()
        order = np.argsort(flat, kind="stable")
        self.query = np.repeat(np.arange(probs.shape[0]), probs.shape[1])[order]
        self.right = right.ravel()[order].astype(float)
        # Tied probabilities form one group.
        self.group = np.concatenate([[0], np.cumsum(np.diff(flat[order]) != 0)])
        self.groups = int(self.group[-1]) + 1

    def __call__(self, weights: np.ndarray) -> float:
        w = weights[self.query]
        pos = np.bincount(self.group, w * self.right, self.groups)
        neg = np.bincount(self.group, w * (1 - self.right), self.groups)
        below = np.cumsum(neg) - neg  # negatives strictly below each group
        total = pos.sum() * neg.sum()
        return float((pos * (below + 0.5 * neg)).sum() / total) if total else float("nan")


def paired_weighted_bootstrap(statistic_a: Callable[[np.ndarray], float],
                              statistic_b: Callable[[np.ndarray], float], n: int, *,
                              samples: int = 2000, seed: int = 0,
                              differences: bool = False) -> dict:
    """statistic_a - statistic_b, each a figure of ``n`` queries under query weights (a
    resample's multiplicities), with the paired bootstrap 95% interval and standard error
    over queries (the same resampled queries for both). The resamples depend only on ``n``
    and ``seed``, so calls with the same ones resample alike; ``differences``: the resampled
    differences too (an array, under that key)."""
    ones = np.ones(n)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(samples):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        diffs.append(statistic_a(weights) - statistic_b(weights))
    return _bootstrap_summary(statistic_a(ones) - statistic_b(ones), np.array(diffs), n,
                              differences)


def paired_two_way_bootstrap(statistic_a: Callable[[np.ndarray], Callable[[np.ndarray], float]],
                             statistic_b: Callable[[np.ndarray], Callable[[np.ndarray], float]],
                             n_queries: int, n_models: int, *, samples: int = 2000,
                             seed: int = 0, differences: bool = False) -> dict:
    """As ``paired_weighted_bootstrap``, resampling the candidate models as well as the
    queries: ``statistic_x(columns)`` is the figure (of query weights) of the pool made of
    those candidate columns (a resample, with repeats). The interval then counts how the
    difference varies with the pool, which a claim about models outside it must (a start
    picked on the training models and applied to new ones). Resamples and ``differences``
    as there."""
    rng = np.random.default_rng(seed)
    every, ones = np.arange(n_models), np.ones(n_queries)
    diffs = []
    for _ in range(samples):
        columns = np.sort(rng.integers(0, n_models, n_models))
        weights = np.bincount(rng.integers(0, n_queries, n_queries),
                              minlength=n_queries).astype(float)
        diffs.append(statistic_a(columns)(weights) - statistic_b(columns)(weights))
    return {**_bootstrap_summary(statistic_a(every)(ones) - statistic_b(every)(ones),
                                 np.array(diffs), n_queries, differences),
            "models": int(n_models)}


def _bootstrap_summary(difference: float, diffs: np.ndarray, n: int,
                       differences: bool = False) -> dict:
    return {"difference": difference,
            "low": float(np.nanpercentile(diffs, 2.5)),
            "high": float(np.nanpercentile(diffs, 97.5)),
            "standard_error": float(np.nanstd(diffs)),
            "share_above_zero": float((diffs > 0).mean()), "queries": int(n),
            **({"differences": diffs} if differences else {})}


def paired_auc_bootstrap(probs_a: np.ndarray, probs_b: np.ndarray, right: np.ndarray, *,
                         samples: int = 2000, seed: int = 0) -> dict:
    """AUC(a) - AUC(b), each pooled over every (query, candidate) pair, with the paired
    bootstrap 95% interval over queries (the same resampled queries for both)."""
    if not probs_a.shape == probs_b.shape == right.shape:
        raise ValueError(f"paired AUCs need the same (queries, candidates): {probs_a.shape}, "
                         f"{probs_b.shape}, {right.shape}")
    return paired_weighted_bootstrap(WeightedPooledAuc(probs_a, right),
                                     WeightedPooledAuc(probs_b, right), len(right),
                                     samples=samples, seed=seed)


def compare(result, router: str, others: Sequence[str], *, samples: int = 2000,
            seed: int = 0) -> dict:
    """``router`` against each of ``others`` (routers or references of ``result``, an
    ``EvalResult`` or its JSON): routed score, and query AUC where both are routers; the
    pooled AUC too where ``result`` still holds both routers' probabilities (an
    ``EvalResult`` just computed, not its JSON)."""
    per_query = result["per_query"] if isinstance(result, dict) else result.per_query
    probabilities = {} if isinstance(result, dict) else result.probabilities
    mine = per_query[router]
    out = {}
    for other in others:
        theirs = per_query[other]
        row = {"routed_accuracy": paired_bootstrap(mine["score"], theirs["score"],
                                                   samples=samples, seed=seed)}
        if "query_auc" in mine and "query_auc" in theirs:
            row["query_auc"] = paired_bootstrap(mine["query_auc"], theirs["query_auc"],
                                                samples=samples, seed=seed)
        if router in probabilities and other in probabilities:
            row["auc"] = paired_auc_bootstrap(probabilities[router], probabilities[other],
                                              result.test_right, samples=samples, seed=seed)
        out[other] = row
    return out
