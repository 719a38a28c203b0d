"""Capability instructions: what a small LLM reads to predict whether a model answers correctly.

One capability instruction is [model representation, user instruction, inquiry] with the
model's real score as label (``build_instructions``). For Model-SAT's listwise loss,
``build_kshot_groups`` puts k instructions of one model together, exactly one of them answered
correctly, and records where that one is. Core items of the aptitude test are excluded: they
define the representation and are never training targets or evaluation data.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset

from .aptitude import AptitudeTest
from .errors import DataError
from .outcomes import OutcomeTable, read_parquet

INQUIRY_PROMPT = "Can the model above answer this instruction correctly? Answer Yes or No."
#: A score at or above this counts as a correct answer (graded scores: "mostly right").
CORRECT_AT = 0.5

INSTRUCTION_SCHEMA = pa.schema([
    ("query_id", pa.string()), ("model", pa.string()), ("model_representation", pa.string()),
    ("instruction", pa.string()), ("inquiry", pa.string()), ("label", pa.float64()),
    ("task", pa.string())])
KSHOT_SCHEMA = pa.schema([
    ("group_id", pa.string()), ("model", pa.string()), ("model_representation", pa.string()),
    ("query_ids", pa.list_(pa.string())), ("instructions", pa.list_(pa.string())),
    ("tasks", pa.list_(pa.string())), ("labels", pa.list_(pa.float64())),
    ("positive_index", pa.int64()), ("inquiry", pa.string())])


def _excluded_ids(exclude: AptitudeTest | Iterable[str]) -> set[str]:
    if isinstance(exclude, AptitudeTest):
        return set(exclude.item_ids)
    if isinstance(exclude, str):
        raise DataError("exclude must be an AptitudeTest or a collection of query ids, not one "
                        "string", field="exclude")
    return {str(q) for q in exclude}


def _check_representations(table: OutcomeTable, representations: Mapping[str, str]) -> None:
    missing = [m for m in table.models if m not in representations]
    if missing:
        raise DataError(f"no representation for model(s) {missing}", field="model")
    empty = [m for m in table.models if not str(representations[m]).strip()]
    if empty:
        raise DataError(f"empty representation for model(s) {empty}", field="model")


def _observed_cells(table: OutcomeTable, exclude: set[str]) -> pd.DataFrame:
    """query_id, model, label for every observed score, query-major, core items left out."""
    keep = ~table.scores.index.isin(list(exclude))
    long = table.scores[keep].stack(future_stack=True).rename("label").reset_index()
    long.columns = ["query_id", "model", "label"]
    return long[long["label"].notna()].reset_index(drop=True)


def build_instructions(table: OutcomeTable, representations: Mapping[str, str], *,
                       exclude: AptitudeTest | Iterable[str]) -> Dataset:
    """One row per observed (query, model) cell of ``table``, except the ``exclude`` queries
    (pass the aptitude test; an empty collection is an explicit opt-out).

    Columns: query_id, model, model_representation, instruction, inquiry, label (the score),
    task. Raises DataError for a model of ``table`` without a representation.
    """
    _check_representations(table, representations)
    cells = _observed_cells(table, _excluded_ids(exclude))
    queries = table.queries.loc[cells["query_id"]]
    frame = pd.DataFrame({
        "query_id": cells["query_id"].to_numpy(),
        "model": cells["model"].to_numpy(),
        "model_representation": cells["model"].map(representations).to_numpy(),
        "instruction": queries["query"].to_numpy(),
        "inquiry": INQUIRY_PROMPT,
        "label": cells["label"].to_numpy(dtype=float),
        "task": queries["task"].to_numpy()})
    return Dataset(pa.Table.from_pandas(frame, schema=INSTRUCTION_SCHEMA, preserve_index=False))


def _model_rng(seed: int, model: str) -> np.random.Generator:
    # Keyed by the model's name, so adding or removing another model changes nothing here.
    return np.random.default_rng([int(seed), zlib.crc32(model.encode("utf-8"))])


def build_kshot_groups(table: OutcomeTable, representations: Mapping[str, str], k: int,
                       seed: int, *, exclude: AptitudeTest | Iterable[str]) -> Dataset:
    """Per model, groups of ``k`` instructions: one the model got right (score >= 0.5) and
    ``k - 1`` it got wrong, shuffled, with the right one's place in ``positive_index``.

    Every instruction is used at most once per model, so a model gets
    ``min(#right, #wrong // (k - 1))`` groups (none if it has too few wrong answers).
    Deterministic by ``seed``. One row per group; list columns hold the k members.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise DataError(f"k must be an integer >= 2 (one right answer and at least one wrong "
                        f"one), got {k!r}", field="k")
    _check_representations(table, representations)
    cells = _observed_cells(table, _excluded_ids(exclude))
    ids = table.queries.index.to_numpy(dtype=object)
    texts = table.queries["query"].to_numpy(dtype=object)
    tasks = table.queries["task"].to_numpy(dtype=object)
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
            "model_representation": representations[model],
            "query_ids": list(ids[rows]),
            "instructions": list(texts[rows]),
            "tasks": list(tasks[rows]),
            "labels": list(grid[..., 1].astype(float)),
            "positive_index": positions.astype(np.int64),
            "inquiry": INQUIRY_PROMPT}))
    frame = (pd.concat(parts, ignore_index=True) if parts
             else pd.DataFrame({name: [] for name in KSHOT_SCHEMA.names}))
    return Dataset(pa.Table.from_pandas(frame, schema=KSHOT_SCHEMA, preserve_index=False))


def groups_per_model(groups: Dataset) -> dict[str, int]:
    """How many k-shot groups each model got."""
    counts = pd.Series(groups["model"], dtype=object).value_counts()
    return {str(m): int(n) for m, n in counts.sort_index().items()}


# ----------------------------------------------------------------------------- I/O
def save_instructions(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` (instructions or k-shot groups) as Parquet atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        # The arrow view honours a selection or shuffle made on ``ds`` (its indices mapping).
        # Texts repeat across rows (one per model, k per group): a dictionary page big enough
        # to hold them all makes the k-shot file ~15x smaller than the 1 MB default.
        pq.write_table(ds.with_format("arrow")[:], tmp, compression="zstd",
                       dictionary_pagesize_limit=64 << 20)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_instructions(path: str | os.PathLike) -> Dataset:
    """Read Parquet written by ``save_instructions``; checks it has the columns of capability
    instructions or of k-shot groups."""
    path = Path(path)
    table = read_parquet(path)
    names = set(table.column_names)
    schema = KSHOT_SCHEMA if "group_id" in names else INSTRUCTION_SCHEMA
    for column in schema:
        if column.name not in names:
            raise DataError("missing column", file=str(path), field=column.name)
        if not table.schema.field(column.name).type.equals(column.type):
            raise DataError(f"has type {table.schema.field(column.name).type}, expected "
                            f"{column.type}", file=str(path), field=column.name)
    return Dataset(table.select(schema.names))
