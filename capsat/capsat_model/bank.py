"""The evidence bank of a CapSAT router: the items its candidates are described by.

Items are the training queries (their sentence embeddings and tasks, and how the training
pool scored them); each candidate has its outcomes on the items it answered: every item for
a model it was trained on, the aptitude items for one it onboarded. A candidate's evidence is
its answered items. The pool's success on an item counts the *training* models only, leaving
the candidate's own outcome out (so a known model's evidence reads like a new one's), and,
with ``pool_groups``, its whole group's (a router trained to onboard whole new model
families reads a known model against a pool without its siblings, as it reads a new family).

Saved as ``evidence.safetensors`` (embeddings in float16, outcomes with NaN where a
candidate has no outcome) and the item ids in the registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from data_builders.errors import DataError

from .evidence import Evidence, RidgeDifficulty


@dataclass
class EvidenceBank:
    item_ids: list[str]  # N
    embeddings: np.ndarray  # (N, E) float32, unit rows
    tasks: np.ndarray  # (N,) int64: index into the router's tasks
    pool_sum: np.ndarray  # (N,) sum of the training models' scores on the item
    pool_count: np.ndarray  # (N,) how many training models have a score on it
    outcomes: np.ndarray  # (M, N) float64, NaN = not in this candidate's evidence
    trained: np.ndarray  # (M,) bool: the candidate is one of the training models
    #: (M,) int: a candidate's pool leaves out every training model of its group (its model
    #: family); None: only itself.
    pool_groups: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.item_ids)
        for name in ("embeddings", "tasks", "pool_sum", "pool_count"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"EvidenceBank.{name} has {len(getattr(self, name))} rows for "
                                 f"{n} items")
        if self.outcomes.shape[1] != n or len(self.trained) != len(self.outcomes):
            raise ValueError("EvidenceBank outcomes must be (candidates, items)")
        if self.pool_groups is not None:
            self.pool_groups = np.asarray(self.pool_groups, dtype=np.int64)
            if self.pool_groups.shape != (len(self.outcomes),):
                raise ValueError(f"EvidenceBank.pool_groups has shape {self.pool_groups.shape} "
                                 f"for {len(self.outcomes)} candidates")
        # Stored in float16: held that way in memory too, so a loaded router scores exactly
        # as the one that was saved.
        self.embeddings = np.asarray(self.embeddings, dtype=np.float16).astype(np.float32)
        self.index = {q: i for i, q in enumerate(self.item_ids)}

    @property
    def n_candidates(self) -> int:
        return len(self.outcomes)

    def pool_success_without(self, models: Sequence[int]) -> np.ndarray:
        """(N,) the training pool's mean score on each item with the training models among
        ``models`` (bank rows), and those of their ``pool_groups``, left out (prior 0.5 where
        nothing is left)."""
        rows = np.asarray(models, dtype=np.int64)
        if self.pool_groups is not None and len(rows):
            rows = np.flatnonzero(np.isin(self.pool_groups, self.pool_groups[rows]))
        seen = self.trained[rows, None] & ~np.isnan(self.outcomes[rows])
        drop = np.where(seen, self.outcomes[rows], 0.0).sum(axis=0)
        count = self.pool_count - seen.sum(axis=0)
        return np.where(count > 0, (self.pool_sum - drop) / np.maximum(count, 1), 0.5)

    def pool_success(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(M, N) the training pool's mean score on each item, the candidate's own outcome
        left out where it is a training model (so a known model's evidence reads like a new
        one's)."""
        rows = np.arange(self.n_candidates) if rows is None else np.asarray(rows)
        if not len(rows):
            return np.zeros((0, len(self.item_ids)))
        return np.stack([self.pool_success_without([r]) for r in rows])

    def task_means(self, success: np.ndarray, n_tasks: int) -> np.ndarray:
        """(..., T) the mean of ``success`` (..., N) per task over the items the training
        pool scored (0.5 for an empty task): the baseline of a query's difficulty."""
        scored = np.flatnonzero(self.pool_count > 0)
        one_hot = np.zeros((len(scored), n_tasks))
        one_hot[np.arange(len(scored)), self.tasks[scored]] = 1.0
        count = one_hot.sum(axis=0)
        return np.where(count > 0, success[..., scored] @ one_hot / np.maximum(count, 1), 0.5)

    def evidence(self, rows: np.ndarray | None = None, *, max_items: int = 0,
                 seed: int = 0, items: Sequence[str] | None = None,
                 n_tasks: int | None = None, difficulty_ridge: float = 0.0) -> Evidence:
        """The evidence of candidates ``rows`` (default all) over the items any of them has,
        each capped at ``max_items`` of its items (a seeded sample; 0 = all); ``items``: only
        these bank items (a known model read as if onboarded from its results on them).
        With ``n_tasks`` (a router that reads the query's difficulty) the pool is every item
        the training pool scored, whoever's evidence it is in, with each candidate's
        ``task_success`` (``task_means`` of its pool success), and with ``difficulty_ridge``
        (a penalty) each candidate's ``difficulty_weights`` fitted on those items; the same
        for the whole training pool as one row (``shared_*``). A candidate is read as
        onboarded (``Evidence.onboarded``) if it is not a training model, or if ``items``
        restricts it."""
        rows = np.arange(self.n_candidates) if rows is None else np.asarray(rows)
        has = ~np.isnan(self.outcomes[rows])
        if items is not None:
            unknown = [q for q in items if q not in self.index]
            if unknown:
                raise DataError(f"{len(unknown)} item(s) are not in the evidence bank, e.g. "
                                f"{unknown[:3]}", field="items")
            only = np.zeros(len(self.item_ids), dtype=bool)
            only[[self.index[q] for q in items]] = True
            has &= only[None]
        if max_items:
            for r in range(len(rows)):
                items = np.flatnonzero(has[r])
                if len(items) > max_items:
                    rng = np.random.default_rng([seed, int(rows[r])])  # the candidate's own
                    keep = rng.choice(items, max_items, replace=False)
                    has[r] = False
                    has[r, keep] = True
        used = np.flatnonzero(has.any(axis=0) if n_tasks is None
                              else has.any(axis=0) | (self.pool_count > 0))
        outcomes = np.nan_to_num(self.outcomes[rows][:, used], nan=0.0)
        success = self.pool_success(rows)
        shared = self.pool_success_without([])[None]  # (1, N): the whole training pool
        task_success = weights = shared_task = shared_weights = None
        if n_tasks is not None:
            task_success, shared_task = (
                torch.from_numpy(self.task_means(s, n_tasks).astype(np.float32))
                for s in (success, shared))
            if difficulty_ridge:
                scored = np.flatnonzero(self.pool_count > 0)
                ridge = RidgeDifficulty(torch.from_numpy(self.embeddings[scored]),
                                        torch.from_numpy(self.tasks[scored]), difficulty_ridge)
                # the candidates and the whole pool in one solve
                fitted = ridge.weights(torch.from_numpy(np.vstack([success, shared])[:, scored]),
                                       torch.cat([task_success, shared_task]))
                weights, shared_weights = fitted[:-1], fitted[-1:]
        elif difficulty_ridge:
            raise ValueError("EvidenceBank.evidence: difficulty_ridge needs n_tasks")
        return Evidence(torch.from_numpy(self.embeddings[used].astype(np.float32)),
                        torch.from_numpy(self.tasks[used].astype(np.int64)),
                        torch.from_numpy(outcomes.astype(np.float32)),
                        torch.from_numpy(success[:, used].astype(np.float32)),
                        torch.from_numpy(has[:, used]), task_success,
                        torch.from_numpy(~self.trained[rows] | (items is not None)), weights,
                        torch.from_numpy(shared[:, used].astype(np.float32)), shared_task,
                        shared_weights)

    def add(self, results: dict[str, float], trained: bool = False) -> None:
        """A new candidate with outcomes on some bank items (its aptitude answers)."""
        unknown = [q for q in results if q not in self.index]
        if unknown:
            raise DataError(f"{len(unknown)} result(s) are on items this router has no "
                            f"evidence slot for, e.g. {unknown[:3]}", field="results")
        row = np.full(len(self.item_ids), np.nan)
        for q, value in results.items():
            row[self.index[q]] = float(value)
        self.outcomes = np.vstack([self.outcomes, row])
        self.trained = np.append(self.trained, trained)
        if self.pool_groups is not None:  # a group of its own
            self.pool_groups = np.append(self.pool_groups, self.pool_groups.max(initial=-1) + 1)

    def replace(self, row: int, results: dict[str, float]) -> None:
        if self.trained[row]:
            raise DataError("a model the router was trained on cannot be replaced by its "
                            "aptitude results", field="name")
        self.outcomes[row] = np.nan
        for q, value in results.items():
            self.outcomes[row, self.index[q]] = float(value)

    # ------------------------------------------------------------- storage
    def arrays(self) -> dict[str, torch.Tensor]:
        return {"item_embeddings": torch.from_numpy(self.embeddings.astype(np.float16)),
                "item_tasks": torch.from_numpy(self.tasks.astype(np.int64)),
                "pool_sum": torch.from_numpy(self.pool_sum.astype(np.float64)),
                "pool_count": torch.from_numpy(self.pool_count.astype(np.float64)),
                "outcomes": torch.from_numpy(self.outcomes.astype(np.float32)),
                "trained": torch.from_numpy(self.trained.astype(np.int64)),
                **({} if self.pool_groups is None else
                   {"pool_groups": torch.from_numpy(self.pool_groups.astype(np.int64))})}

    @classmethod
    def from_arrays(cls, item_ids: list[str], arrays: dict[str, torch.Tensor],
                    file: str = "") -> "EvidenceBank":
        for key in ("item_embeddings", "item_tasks", "pool_sum", "pool_count", "outcomes",
                    "trained"):
            if key not in arrays:
                raise DataError("missing array", file=file, field=key)
        return cls(list(item_ids), arrays["item_embeddings"].float().numpy(),
                   arrays["item_tasks"].numpy(), arrays["pool_sum"].numpy(),
                   arrays["pool_count"].numpy(), arrays["outcomes"].double().numpy(),
                   arrays["trained"].numpy().astype(bool),
                   arrays["pool_groups"].numpy() if "pool_groups" in arrays else None)
