"""Helpers shared by the classic routers: score matrices, smoothed priors, grid selection on
validation log-loss, checks on saved state and query embeddings."""
from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np

from data_builders.errors import DataError
from data_builders.outcomes import OutcomeTable

if TYPE_CHECKING:
    from .base import Queries, Router


def score_matrix(table: OutcomeTable) -> np.ndarray:
    """The table's (queries x models) scores as a fresh float64 array, NaN where there is no
    record (a copy: pandas may hand out read-only views)."""
    return np.array(table.scores.to_numpy(dtype=float))


def smoothed_model_means(scores: np.ndarray, models: Sequence[str]) -> np.ndarray:
    """Per-model Laplace-smoothed mean score, (sum + 1) / (count + 2): strictly inside (0, 1)
    even for a model that was always right (or always wrong) in training."""
    observed = ~np.isnan(scores)
    counts = observed.sum(axis=0)
    if (counts == 0).any():
        empty = [m for m, c in zip(models, counts) if c == 0]
        raise DataError(f"no training scores for model(s) {empty}", field="model")
    sums = np.where(observed, scores, 0.0).sum(axis=0)
    return (sums + 1.0) / (counts + 2.0)


def shrunk_means(sums: np.ndarray, counts: np.ndarray, prior: np.ndarray,
                 prior_weight: float) -> np.ndarray:
    """(sums + w * prior) / (counts + w): a mean pulled toward ``prior`` with ``w`` pseudo-counts.

    ``sums`` / ``counts`` broadcast against the per-model ``prior`` (last axis = models).
    """
    return (sums + prior_weight * prior) / (counts + prior_weight)


def masked_log_loss(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy over the observed (non-NaN) targets; targets may be graded."""
    mask = ~np.isnan(targets)
    if not mask.any():
        raise ValueError("no observed targets to compute a log-loss on")
    p = np.clip(probs[mask], 1e-12, 1 - 1e-12)
    y = targets[mask]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def pick_by_log_loss(candidates: dict[Hashable, np.ndarray], targets: np.ndarray
                     ) -> tuple[Hashable, dict[Hashable, float]]:
    """The candidate key whose probabilities have the lowest masked log-loss on ``targets``;
    ties go to the first key in order. Returns (key, {key: loss})."""
    losses = {key: masked_log_loss(probs, targets) for key, probs in candidates.items()}
    best = min(losses, key=lambda key: (losses[key], list(losses).index(key)))
    return best, losses


def has_rows(table: OutcomeTable | None) -> bool:
    return table is not None and len(table) > 0


def check_grid(name: str, grid: Sequence, *, minimum: float, integer: bool = False) -> list:
    """A hyper-parameter grid from the config: non-empty, every value >= ``minimum``."""
    values = list(grid)
    if not values:
        raise ValueError(f"{name} is empty")
    for value in values:
        if integer and (isinstance(value, bool) or int(value) != value):
            raise ValueError(f"{name} must hold integers, got {value!r}")
        if not value >= minimum:
            raise ValueError(f"{name} values must be >= {minimum}, got {value!r}")
    return [int(v) for v in values] if integer else [float(v) for v in values]


def require_state(router: str, state: dict, keys: Sequence[str]) -> None:
    """A saved router's JSON state must carry every key: never fill one with a default."""
    for key in keys:
        if key not in state:
            raise DataError(f"saved {router} router lacks state value {key!r}",
                            field=f"state.{key}")


def query_matrix(router: "Router", queries: "Queries", dim: int) -> np.ndarray:
    """The queries' embeddings as float64, checked against the training dimension."""
    x = np.asarray(queries.embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise DataError(f"{router.name}: query embeddings have shape {x.shape}, the router was "
                         f"trained on dimension {dim} (encoder {router.config.encoder!r})")
    return x


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), so dot products are cosines."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def task_centroids(embeddings: np.ndarray, tasks: Sequence[str], names: Sequence[str]
                   ) -> np.ndarray:
    """(T, d) unit-length mean embedding of each task's queries, rows in ``names`` order."""
    x = unit_rows(np.asarray(embeddings, dtype=np.float64))
    tasks = np.asarray(tasks, dtype=object)
    rows = [x[tasks == t].mean(axis=0) if (tasks == t).any() else np.zeros(x.shape[1])
            for t in names]
    return unit_rows(np.stack(rows))


def query_tasks(queries: "Queries", names: Sequence[str], centroids: np.ndarray) -> np.ndarray:
    """Index into ``names`` of each query's task: its label when it has a known one, else the
    nearest task centroid (logs carry no task label)."""
    x = unit_rows(np.asarray(queries.embeddings, dtype=np.float64))
    nearest = np.argmax(x @ centroids.T, axis=1)
    if queries.tasks is None:
        return nearest
    index = {t: i for i, t in enumerate(names)}
    return np.array([index.get(t, n) for t, n in zip(queries.tasks, nearest)])
