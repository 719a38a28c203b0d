"""Model-SAT k-shot groups: per model, k training queries of which exactly one was answered
correctly, and where that one is. CapSAT's listwise loss reads them (query ids only: the
model reads the instruction texts from the outcome table). Core items of the aptitude test
are excluded: they describe the model and are never training targets.
"""
from __future__ import annotations

import zlib
from typing import Iterable

import numpy as np
import pandas as pd

from .aptitude import AptitudeTest
from .errors import DataError
from .outcomes import OutcomeTable

#: A score at or above this counts as a correct answer (graded scores: "mostly right").
CORRECT_AT = 0.5
GROUP_COLUMNS = ["group_id", "model", "query_ids", "positive_index"]


def _excluded_ids(exclude: AptitudeTest | Iterable[str]) -> set[str]:
    if isinstance(exclude, AptitudeTest):
        return set(exclude.item_ids)
    if isinstance(exclude, str):
        raise DataError("exclude must be an AptitudeTest or a collection of query ids, not one "
                        "string", field="exclude")
    return {str(q) for q in exclude}


def _observed_cells(table: OutcomeTable, exclude: set[str]) -> pd.DataFrame:
    """query_id, model, label for every observed score, query-major, core items left out."""
    keep = ~table.scores.index.isin(list(exclude))
    long = table.scores[keep].stack(future_stack=True).rename("label").reset_index()
    long.columns = ["query_id", "model", "label"]
    return long[long["label"].notna()].reset_index(drop=True)


def _model_rng(seed: int, model: str) -> np.random.Generator:
    # Keyed by the model's name, so adding or removing another model changes nothing here.
    return np.random.default_rng([int(seed), zlib.crc32(model.encode("utf-8"))])


def build_kshot_groups(table: OutcomeTable, k: int, seed: int, *,
                       exclude: AptitudeTest | Iterable[str]) -> pd.DataFrame:
    """Per model, groups of ``k`` instructions: one the model got right (score >= 0.5) and
    ``k - 1`` it got wrong, shuffled, with the right one's place in ``positive_index``.

    Every instruction is used at most once per model, so a model gets
    ``min(#right, #wrong // (k - 1))`` groups (none if it has too few wrong answers).
    Deterministic by ``seed``. One row per group (``GROUP_COLUMNS``); ``query_ids`` lists the
    k members.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise DataError(f"k must be an integer >= 2 (one right answer and at least one wrong "
                        f"one), got {k!r}", field="k")
    cells = _observed_cells(table, _excluded_ids(exclude))
    ids = table.queries.index.to_numpy(dtype=object)
    cells["row"] = table.queries.index.get_indexer(cells["query_id"])
    parts = []
    for model in table.models:
        mine = cells[cells["model"] == model]
        right = mine.loc[mine["label"] >= CORRECT_AT, ["row", "label"]].to_numpy()
        wrong = mine.loc[mine["label"] < CORRECT_AT, ["row", "label"]].to_numpy()
        rng = _model_rng(seed, model)
        right = right[rng.permutation(len(right))]
        wrong = wrong[rng.permutation(len(wrong))]
        n_groups = min(len(right), len(wrong) // (k - 1))
        if n_groups == 0:
            continue
        positions = rng.integers(0, k, size=n_groups)
        # Member j < k-1 of a group is its j-th wrong answer, member k-1 its right one; the
        # right one goes to slot positions[g], the wrong ones fill the other slots in order.
        members = np.concatenate([wrong[:n_groups * (k - 1)].reshape(n_groups, k - 1, 2),
                                  right[:n_groups, None, :]], axis=1)
        slot = np.arange(k)[None, :]
        pick = np.where(slot == positions[:, None], k - 1,
                        np.where(slot < positions[:, None], slot, slot - 1))
        grid = np.take_along_axis(members, pick[..., None].repeat(2, axis=2), axis=1)
        rows = grid[..., 0].astype(int)
        parts.append(pd.DataFrame({
            "group_id": [f"{model}/{g}" for g in range(n_groups)],
            "model": model,
            "query_ids": [list(r) for r in ids[rows]],
            "positive_index": positions.astype(np.int64)}))
    return (pd.concat(parts, ignore_index=True) if parts
            else pd.DataFrame({name: [] for name in GROUP_COLUMNS}))


def groups_per_model(groups: pd.DataFrame) -> dict[str, int]:
    """How many k-shot groups each model got."""
    counts = groups["model"].value_counts()
    return {str(m): int(n) for m, n in counts.sort_index().items()}
