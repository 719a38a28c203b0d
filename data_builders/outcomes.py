"""The canonical outcome table: which model answered which query, how well, at what cost.

On disk it is long (one row per (query, model)) Parquet with the columns of ``LONG_SCHEMA``;
in memory it is held wide, because every router works on the query x model matrix.
Table-level facts (name, cost unit, model cards, provenance) travel in the Parquet metadata.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path
from .errors import DataError

# Column -> (arrow type, required, help).
LONG_SCHEMA: dict[str, tuple[pa.DataType, bool, str]] = {
    "query_id": (pa.string(), True, "stable id of the query, unique within a data set"),
    "query": (pa.string(), True, "the user instruction, as the candidate saw it"),
    "task": (pa.string(), True, "category or benchmark the query belongs to"),
    "model": (pa.string(), True, "candidate model name"),
    "score": (pa.float64(), True, "1 correct, 0 wrong, or a graded score in [0, 1]"),
    "cost": (pa.float64(), False, "cost of this call, in the table's cost_unit; null if unknown"),
    "response": (pa.string(), False, "the candidate's output text; null if not recorded"),
    "answer": (pa.string(), False, "the query's reference answer (e.g. the option letter of a "
                                   "multiple-choice question), for grading aptitude items; "
                                   "null if unknown"),
}
#: Columns that describe the query (one value per query_id), beside its text and task.
QUERY_COLUMNS = ("query", "task", "answer")
REQUIRED_COLUMNS = [c for c, (_, req, _) in LONG_SCHEMA.items() if req]
COST_UNITS = ("usd", "output_chars")
MAX_QUERY_CHARS = 200_000


@dataclass
class OutcomeTable:
    """Outcomes of a set of models on a set of queries.

    ``queries`` is indexed by query_id with columns ``query`` and ``task`` (and ``answer``, the
    reference answer, where the source has one); ``scores``,
    ``costs`` and ``responses`` are query x model frames aligned with it (NaN / None where the
    source has no record).
    """

    name: str
    queries: pd.DataFrame
    scores: pd.DataFrame
    costs: pd.DataFrame | None = None
    responses: pd.DataFrame | None = None
    cost_unit: str | None = None
    model_info: dict[str, dict] = field(default_factory=dict)
    provenance: str = ""

    def __post_init__(self):
        if not self.queries.index.equals(self.scores.index):
            raise ValueError("queries and scores must share the same query_id index, in order")
        for name in ("costs", "responses"):
            frame = getattr(self, name)
            if frame is not None and (not frame.index.equals(self.scores.index)
                                      or list(frame.columns) != list(self.scores.columns)):
                raise ValueError(f"{name} must have the same index and columns as scores")
        if self.costs is not None and self.cost_unit not in COST_UNITS:
            raise ValueError(f"cost_unit must be one of {COST_UNITS} when costs are given, "
                             f"got {self.cost_unit!r}")

    # ----------------------------------------------------------------- views
    @property
    def models(self) -> list[str]:
        return list(self.scores.columns)

    @property
    def query_ids(self) -> list[str]:
        return list(self.queries.index)

    @property
    def texts(self) -> list[str]:
        return self.queries["query"].tolist()

    @property
    def tasks(self) -> list[str]:
        return self.queries["task"].tolist()

    def __len__(self) -> int:
        return len(self.queries)

    def __repr__(self) -> str:
        return (f"OutcomeTable({self.name!r}, {len(self)} queries x {len(self.models)} models, "
                f"{self.queries['task'].nunique()} tasks, cost_unit={self.cost_unit!r})")

    def check_models(self, models: Iterable[str]) -> list[str]:
        """Return ``models`` as a list, raising on any name this table does not have."""
        models = list(models)
        unknown = [m for m in models if m not in self.scores.columns]
        if unknown:
            raise DataError(f"unknown model(s) {unknown}; {self.name!r} has {self.models}",
                            field="model")
        if len(set(models)) != len(models):
            raise DataError(f"model list has duplicates: {models}", field="model")
        return models

    def subset(self, query_ids: Sequence[str] | None = None,
               models: Sequence[str] | None = None) -> "OutcomeTable":
        rows = self.queries.index if query_ids is None else pd.Index(query_ids)
        cols = self.models if models is None else self.check_models(models)
        missing = rows.difference(self.queries.index)
        if len(missing):
            raise DataError(f"{len(missing)} unknown query ids, e.g. {list(missing[:3])}",
                            field="query_id")

        def cut(frame):
            return None if frame is None else frame.loc[rows, cols]

        return OutcomeTable(self.name, self.queries.loc[rows], cut(self.scores), cut(self.costs),
                            cut(self.responses), self.cost_unit,
                            {m: self.model_info[m] for m in cols if m in self.model_info},
                            self.provenance)

    def complete(self) -> "OutcomeTable":
        """Only the queries that every model of the table has a score for."""
        keep = self.scores.notna().all(axis=1)
        return self.subset(self.scores.index[keep])

    # ------------------------------------------------------------ conversion
    def to_long(self) -> pd.DataFrame:
        long = self.scores.stack(future_stack=True).rename("score").reset_index()
        long.columns = ["query_id", "model", "score"]
        long = long[long["score"].notna()]
        for name in ("costs", "responses"):
            frame = getattr(self, name)
            if frame is not None:
                col = "cost" if name == "costs" else "response"
                values = frame.stack(future_stack=True)
                long[col] = values.loc[list(zip(long["query_id"], long["model"]))].to_numpy()
        long = long.join(self.queries[[c for c in QUERY_COLUMNS if c in self.queries]],
                         on="query_id")
        ordered = [c for c in LONG_SCHEMA if c in long.columns]
        return long[ordered].reset_index(drop=True)

    @classmethod
    def from_long(cls, df: pd.DataFrame, *, name: str, cost_unit: str | None = None,
                  model_info: dict | None = None, provenance: str = "",
                  file: str | None = None, line_numbers: Sequence[int] | None = None
                  ) -> "OutcomeTable":
        """Validate a long frame and build the table.

        ``line_numbers[i]`` is the file line of row ``i``, used in error messages; by default
        the 1-based row number.
        """
        df = df.reset_index(drop=True)
        lines = np.arange(1, len(df) + 1) if line_numbers is None else np.asarray(line_numbers)
        validate_long(df, file=file, lines=lines)
        has_cost = "cost" in df.columns and df["cost"].notna().any()
        if has_cost and cost_unit not in COST_UNITS:
            raise DataError(f"the data has costs, so cost_unit must be one of {COST_UNITS}, "
                            f"got {cost_unit!r}", file=file, field="cost")
        described = [c for c in QUERY_COLUMNS if c in df.columns
                     and (c != "answer" or df[c].notna().any())]
        queries = df.drop_duplicates("query_id").set_index("query_id")[described]
        pivot = lambda col: (df.pivot(index="query_id", columns="model", values=col)
                             .reindex(index=queries.index, columns=_model_order(df)))
        scores = pivot("score").astype(float)
        costs = pivot("cost").astype(float) if has_cost else None
        responses = None
        if "response" in df.columns and df["response"].notna().any():
            responses = pivot("response").astype(object)
        scores.columns.name = None
        scores.index.name = queries.index.name = "query_id"
        for frame in (costs, responses):
            if frame is not None:
                frame.columns.name = None
                frame.index.name = "query_id"
        return cls(name, queries, scores, costs, responses,
                   cost_unit if has_cost else None, dict(model_info or {}), provenance)

    # ------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write long Parquet atomically (temporary file, then rename)."""
        path = Path(path)
        long = self.to_long()
        schema = pa.schema([(c, LONG_SCHEMA[c][0]) for c in long.columns])
        table = pa.Table.from_pandas(long, schema=schema, preserve_index=False)
        table = table.replace_schema_metadata({b"capsat": json.dumps(self._meta()).encode()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd", compression_level=19)
        return path

    def _meta(self) -> dict:
        return {"name": self.name, "cost_unit": self.cost_unit, "model_info": self.model_info,
                "provenance": self.provenance, "models": self.models}

    @classmethod
    def _from_long_with_meta(cls, df: pd.DataFrame, meta: dict, *, name: str,
                             file: str) -> "OutcomeTable":
        out = cls.from_long(df, name=meta.get("name", name), cost_unit=meta.get("cost_unit"),
                            model_info=meta.get("model_info"),
                            provenance=meta.get("provenance", ""), file=file)
        if meta.get("models"):  # keep the column order the table was saved with
            out = out.subset(models=[m for m in meta["models"] if m in out.models])
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "OutcomeTable":
        path = Path(path)
        table = read_parquet(path)
        raw = (table.schema.metadata or {}).get(b"capsat")
        meta = json.loads(raw) if raw else {}
        return cls._from_long_with_meta(table.to_pandas(), meta, name=path.stem,
                                        file=str(path))

    # ------------------------------------------------- Hugging Face datasets
    def to_dataset(self):
        """The long table as an Arrow-backed ``datasets.Dataset`` (one row per pair); the
        table's name, cost unit and model cards travel in ``info.description`` (JSON)."""
        import datasets

        long = self.to_long()
        schema = pa.schema([(c, LONG_SCHEMA[c][0]) for c in long.columns])
        arrow = pa.Table.from_pandas(long, schema=schema, preserve_index=False)
        return datasets.Dataset(arrow, info=datasets.DatasetInfo(
            description=json.dumps({"capsat": self._meta()})))

    def save_to_disk(self, folder: str | os.PathLike) -> Path:
        """``datasets``' memory-mapped folder format, written atomically;
        ``load_outcomes(folder)`` reads it back."""
        from .atomic import atomic_folder

        folder = Path(folder)
        with atomic_folder(folder) as tmp:
            self.to_dataset().save_to_disk(str(tmp))
        return folder

    @classmethod
    def load_from_disk(cls, folder: str | os.PathLike) -> "OutcomeTable":
        """A folder written by ``save_to_disk`` (or any ``datasets`` folder whose columns are
        the long schema's), memory-mapped by ``datasets``."""
        import datasets

        folder = Path(folder)
        try:
            dataset = datasets.load_from_disk(str(folder))
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"not a datasets folder ({err})", file=str(folder)) from err
        if isinstance(dataset, datasets.DatasetDict):
            raise DataError(f"holds several splits {list(dataset)}: pass one split's folder",
                            file=str(folder))
        try:
            meta = json.loads(dataset.info.description or "{}").get("capsat", {})
        except json.JSONDecodeError:
            meta = {}
        return cls._from_long_with_meta(dataset.to_pandas(), meta, name=folder.name,
                                        file=str(folder))


def read_parquet(path: str | os.PathLike) -> pa.Table:
    """Read a Parquet file; a missing or unreadable file is a DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file", file=str(path))
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"not a readable Parquet file ({err})", file=str(path)) from err


def _model_order(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["model"]))


def validate_long(df: pd.DataFrame, *, file: str | None, lines: np.ndarray) -> None:
    """Raise DataError on the first bad cell, naming file, line and field."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"missing required column(s) {missing}; found {list(df.columns)}",
                        file=file, field=missing[0])
    if len(df) == 0:
        raise DataError("no rows", file=file)

    def fail(mask, field, why):
        bad = np.flatnonzero(np.asarray(mask))
        if len(bad):
            i = bad[0]
            value = df[field].iloc[i]
            raise DataError(f"{why} (got {value!r}; {len(bad)} such row(s))", file=file,
                            line=int(lines[i]), field=field)

    for col in ("query_id", "query", "task", "model"):
        values = df[col]
        fail(values.isna(), col, "missing value")
        fail(~values.map(lambda v: isinstance(v, str)), col, "must be text")
        fail(values.str.strip() == "", col, "empty text")
    fail(df["query"].str.len() > MAX_QUERY_CHARS, "query",
         f"longer than {MAX_QUERY_CHARS} characters")
    for col, lo, hi in (("score", 0.0, 1.0), ("cost", 0.0, np.inf)):
        if col not in df.columns:
            continue
        values = df[col]
        numeric = pd.to_numeric(values, errors="coerce")
        required = LONG_SCHEMA[col][1]
        fail(numeric.isna() & (values.notna() if not required else True), col,
             "not a number" if not required else "missing or not a number")
        fail((numeric < lo) | (numeric > hi), col, f"out of range [{lo}, {hi}]")
        df[col] = numeric.astype(float)
    dup = df.duplicated(["query_id", "model"])
    fail(dup, "query_id", "duplicate (query_id, model) pair")
    if "answer" in df.columns:
        fail(df["answer"].notna() & ~df["answer"].map(lambda v: isinstance(v, str)), "answer",
             "must be text")
    described = [c for c in QUERY_COLUMNS if c in df.columns]
    per_query = df.groupby("query_id", sort=False)[described].nunique()
    for col in described:
        conflicted = per_query.index[per_query[col] > 1]
        if len(conflicted):
            fail(df["query_id"].isin(conflicted) & df.duplicated("query_id"), col,
                 "differs between rows of the same query_id")
