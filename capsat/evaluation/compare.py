"""Paired comparisons of routers on the same test queries: the difference of a per-query
figure (realised score, query AUC) with a paired bootstrap 95% interval.

A single split's difference is an anecdote unless its interval says otherwise: queries are
resampled with replacement, the same queries for both routers, and the interval is the
2.5th to 97.5th percentile of the resampled mean differences.
"""
from __future__ import annotations

from typing import Sequence

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


def compare(result, router: str, others: Sequence[str], *, samples: int = 2000,
            seed: int = 0) -> dict:
    """``router`` against each of ``others`` (routers or references of ``result``, an
    ``EvalResult`` or its JSON): routed score, and query AUC where both are routers."""
    per_query = result["per_query"] if isinstance(result, dict) else result.per_query
    mine = per_query[router]
    out = {}
    for other in others:
        theirs = per_query[other]
        row = {"routed_accuracy": paired_bootstrap(mine["score"], theirs["score"],
                                                   samples=samples, seed=seed)}
        if "query_auc" in mine and "query_auc" in theirs:
            row["query_auc"] = paired_bootstrap(mine["query_auc"], theirs["query_auc"],
                                                samples=samples, seed=seed)
        out[other] = row
    return out
