"""Read your own outcome file: CSV, JSONL or Parquet, in wide or long layout.

Accepted files (the format follows the file name):

* ``.csv`` / ``.csv.gz`` -- comma-separated, UTF-8, first line is the header. Quoted fields may
  span several lines. An empty cell means "missing".
* ``.jsonl`` / ``.jsonl.gz`` (also ``.ndjson``) -- one JSON object per line; blank lines are
  skipped. ``null`` or an absent key means "missing".
* An optional ``answer`` column holds each query's reference answer (e.g. the option letter),
  which aptitude items are graded against; it is not a model.
* ``.parquet`` -- one row per record. A Parquet written by ``OutcomeTable.save`` keeps its name,
  cost unit and model cards.

**Wide layout**: one row per query, one score column per model. Optional columns
``<model>|cost`` (cost of that call) and ``<model>|response`` (the model's output text, used by
label-free routers). Every column other than the id, query and task columns is taken as a
model's score column, so pass ``models=[...]`` when the file has extra columns. A missing score
means "this model has no record for this query"::

    query_id,query,task,gpt-4o,gpt-4o|cost,llama-3-8b,llama-3-8b|cost
    q1,What is 2+2?,math,1,0.0021,1,0.0001
    q2,Name the capital of Peru.,geography,1,0.0019,,

**Long layout**: one row per (query, model), with the columns of
``data_builders.outcomes.LONG_SCHEMA`` -- ``query_id, query, task, model, score`` and optionally
``cost`` and ``response``. Every row needs a score (leave out pairs without a record). Other
columns are ignored::

    {"query_id": "q1", "query": "What is 2+2?", "task": "math", "model": "gpt-4o", "score": 1, "cost": 0.0021}
    {"query_id": "q1", "query": "What is 2+2?", "task": "math", "model": "llama-3-8b", "score": 1, "cost": 0.0001}

``layout="auto"`` picks long when the file has both a ``model`` and a ``score`` column.

Rules: a score is a number in [0, 1] (1 correct, 0 wrong, or a graded score); a cost is a
number >= 0 and needs ``cost_unit`` ("usd" or "output_chars"); the query is non-empty text.
Without an id column, each query's id is made from the line it first appears on
(``<name>/line<N>``); integer ids are turned into text. Without a task column every row gets
``default_task`` (an error if that is not given). Every problem raises ``DataError`` naming the
file, the line (CSV: the header is line 1 and a record spanning several lines is reported at
its first line; JSONL: the line; Parquet: the 1-based row number) and the field.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from ..outcomes import COST_UNITS, OutcomeTable, validate_long, read_parquet

LAYOUTS = ("auto", "wide", "long")
_FORMATS = {".csv": "csv", ".csv.gz": "csv", ".jsonl": "jsonl", ".jsonl.gz": "jsonl",
            ".ndjson": "jsonl", ".ndjson.gz": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Records:
    """The rows of a file as read, before any interpretation.

    ``frame`` holds the raw values (object dtype; ``None`` = missing), ``lines[i]`` the file line
    of row ``i`` and ``header_line`` the line that names the columns (None for Parquet).
    """

    frame: pd.DataFrame
    lines: np.ndarray
    header_line: int | None
    metadata: dict


def _format_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise DataError(f"unsupported file type; expected one of {sorted(_FORMATS)}", file=str(path))


def file_format(path: Path) -> str:
    """'csv', 'jsonl' or 'parquet', from the file name."""
    return _FORMATS[_format_suffix(path)]


def default_name(path: Path) -> str:
    """The file name without its format suffix: ``runs.v2.csv.gz`` -> ``runs.v2``."""
    return path.name[: -len(_format_suffix(path))]


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_records(path: str | os.PathLike) -> Records:
    """Read a CSV / JSONL / Parquet file (gzip allowed for the text formats) with line numbers."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file", file=str(path))
    if not path.is_file():
        raise DataError("not a file", file=str(path))
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[file_format(path)]
    return reader(path)


def _read_csv(path: Path) -> Records:
    rows, lines = [], []
    line_done = 0  # lines consumed so far, so the next record starts at line_done + 1
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            header = None
            for row in reader:
                start, line_done = line_done + 1, reader.line_num
                if not row:  # blank line
                    continue
                if header is None:
                    header, header_line = row, start
                    dup = [c for c in header if header.count(c) > 1]
                    if dup:
                        raise DataError("duplicate column name in the header", file=str(path),
                                        line=start, field=dup[0])
                    continue
                if len(row) != len(header):
                    field = header[len(row)] if len(row) < len(header) else None
                    raise DataError(f"expected {len(header)} fields as in the header, got "
                                    f"{len(row)}", file=str(path), line=start, field=field)
                rows.append([None if cell == "" else cell for cell in row])
                lines.append(start)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"unreadable CSV ({type(err).__name__}: {err})", file=str(path),
                        line=line_done + 1) from err
    if header is None:
        raise DataError("empty file: no header line", file=str(path), line=1)
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    return Records(frame, np.asarray(lines, dtype=int), header_line, {})


def _read_jsonl(path: Path) -> Records:
    rows, lines = [], []
    lineno = 0
    try:
        with _open_text(path) as fh:
            for lineno, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as err:
                    raise DataError(f"invalid JSON: {err.msg} (column {err.colno})",
                                    file=str(path), line=lineno) from err
                if not isinstance(row, dict):
                    raise DataError(f"expected a JSON object, got {type(row).__name__}",
                                    file=str(path), line=lineno)
                rows.append(row)
                lines.append(lineno)
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"unreadable JSONL ({type(err).__name__}: {err})", file=str(path),
                        line=lineno + 1) from err
    if not rows:
        raise DataError("no records", file=str(path))
    frame = pd.DataFrame.from_records(rows).astype(object)
    frame = frame.where(frame.notna(), None)
    return Records(frame, np.asarray(lines, dtype=int), lines[0], {})


def _read_parquet(path: Path) -> Records:
    table = read_parquet(path)
    raw_meta = (table.schema.metadata or {}).get(b"capsat")
    frame = table.to_pandas().astype(object)
    frame = frame.where(frame.notna(), None)
    return Records(frame, np.arange(1, len(frame) + 1), None,
                   json.loads(raw_meta) if raw_meta else {})


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _text_ids(values: pd.Series) -> pd.Series:
    """Integer ids (JSON numbers, Parquet int columns) become text; anything else is left to
    validation."""
    return values.map(lambda v: str(v) if isinstance(v, (int, np.integer))
                      and not isinstance(v, (bool, np.bool_)) else v)


def read_outcomes(path: str | os.PathLike, *, layout: str = "auto", name: str | None = None,
                  id_column: str = "query_id", query_column: str = "query",
                  task_column: str = "task", answer_column: str = "answer",
                  models: Sequence[str] | None = None,
                  cost_unit: str | None = None, cost_suffix: str = "|cost",
                  response_suffix: str = "|response", default_task: str | None = None
                  ) -> OutcomeTable:
    """Read a user's outcome file into an OutcomeTable (formats: see the module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    path = Path(path)
    file = str(path)
    records = read_records(path)
    frame, lines = records.frame, records.lines
    meta = records.metadata
    if name is None:
        name = meta.get("name") or default_name(path)
    if cost_unit is None:
        cost_unit = meta.get("cost_unit")

    def missing_column(column: str, why: str = ""):
        return DataError(f"missing column {column!r}{why}; found {list(frame.columns)}",
                         file=file, line=records.header_line, field=column)

    if layout == "auto":
        has_model, has_score = "model" in frame.columns, "score" in frame.columns
        if has_model != has_score:
            raise missing_column("score" if has_model else "model",
                                 " (a long file needs both 'model' and 'score')")
        layout = "long" if has_model else "wide"
    if query_column not in frame.columns:
        raise missing_column(query_column)
    if task_column not in frame.columns and default_task is None:
        raise missing_column(task_column, " (or pass default_task=...)")

    base = pd.DataFrame({"query": frame[query_column]})
    base["task"] = frame[task_column] if task_column in frame.columns else default_task
    if id_column in frame.columns:
        base["query_id"] = _text_ids(frame[id_column])
    else:
        base["query_id"] = None  # filled from line numbers below
    if answer_column in frame.columns:
        base["answer"] = frame[answer_column].map(lambda v: None if _blank(v) else v)
    reserved = {id_column, query_column, task_column, answer_column}

    if layout == "long":
        for column in ("model", "score"):
            if column not in frame.columns:
                raise missing_column(column)
        long = base.assign(model=frame["model"], score=frame["score"])
        for column in ("cost", "response"):
            if column in frame.columns:
                long[column] = frame[column]
        if id_column not in frame.columns:
            long["query_id"] = _ids_from_lines(long, lines, name)
        if models is not None:
            _check_requested(models, list(dict.fromkeys(long["model"])), file)
            keep = long["model"].isin(list(models)).to_numpy()
            long, lines = long[keep], lines[keep]
    else:
        if id_column not in frame.columns:
            base["query_id"] = [f"{name}/line{n}" for n in lines]
        long, lines, model_columns = _melt_wide(frame, base, lines, reserved, models,
                                                cost_suffix, response_suffix, file,
                                                records.header_line)

    long = long.reset_index(drop=True)
    if "cost" in long.columns and cost_unit is None:
        costed = np.flatnonzero(~long["cost"].map(_blank).to_numpy())
        if len(costed):
            raise DataError(f"the file has costs, so pass cost_unit (one of {COST_UNITS})",
                            file=file, line=int(lines[costed[0]]),
                            field="cost" if layout == "long" else
                            f"{long['model'].iloc[costed[0]]}{cost_suffix}")
    table = OutcomeTable.from_long(long, name=name, cost_unit=cost_unit,
                                   model_info=meta.get("model_info"),
                                   provenance=meta.get("provenance") or f"read from {path.name}",
                                   file=file, line_numbers=lines)
    # Model order: as saved (capsat Parquet), else as the file's columns / first appearance.
    order = meta.get("models") or (model_columns if layout == "wide" else table.models)
    return table.subset(models=[m for m in order if m in table.models])


def _ids_from_lines(long: pd.DataFrame, lines: np.ndarray, name: str) -> list[str]:
    """Long rows of one query share the id of the first line that query (text, task) is on."""
    first: dict[tuple, int] = {}
    ids = []
    for key, line in zip(zip(long["query"], long["task"]), lines):
        try:
            ids.append(f"{name}/line{first.setdefault(key, int(line))}")
        except TypeError:  # unhashable (non-text) query: validation reports it
            ids.append(f"{name}/line{int(line)}")
    return ids


def _check_requested(models: Sequence[str], available: list[str], file: str) -> None:
    unknown = [m for m in models if m not in available]
    if unknown:
        raise DataError(f"model(s) {unknown} not in the file; it has {available}", file=file,
                        field="model")


def _melt_wide(frame, base, lines, reserved, models, cost_suffix, response_suffix, file,
               header_line):
    """Wide rows -> long rows (one per present score), validating each model's columns so an
    error names the file's own column (e.g. ``gpt-4o|cost``) rather than ``cost``."""
    extra = [c for c in frame.columns if c not in reserved]
    is_aux = lambda c: c.endswith(cost_suffix) or c.endswith(response_suffix)
    available = [c for c in extra if not is_aux(c)]
    for column in extra:
        if is_aux(column):
            suffix = cost_suffix if column.endswith(cost_suffix) else response_suffix
            if column[: -len(suffix)] not in available:
                raise DataError(f"no score column {column[: -len(suffix)]!r} for this column",
                                file=file, line=header_line, field=column)
    if models is not None:
        _check_requested(models, available, file)
    chosen = list(models) if models is not None else available
    if not chosen:
        raise DataError("no model score columns (every column other than id, query and task "
                        "is a model's score column)", file=file, line=header_line)
    parts, part_lines = [], []
    for model in chosen:
        part = base.assign(model=model, score=frame[model])
        columns = {"score": model}
        for column, suffix in (("cost", cost_suffix), ("response", response_suffix)):
            if model + suffix in frame.columns:
                part[column] = frame[model + suffix]
                columns[column] = model + suffix
        present = ~part["score"].map(_blank).to_numpy()  # a blank score = no record
        part, part_line = part[present].reset_index(drop=True), lines[present]
        if len(part):
            try:
                validate_long(part.copy(), file=file, lines=part_line)
            except DataError as err:
                raise DataError(err.reason, file=err.file, line=err.line,
                                field=columns.get(err.field, err.field)) from err
        parts.append(part)
        part_lines.append(part_line)
    long = pd.concat(parts, ignore_index=True)
    long_lines = np.concatenate(part_lines)
    if len(long) == 0:
        raise DataError(f"no scores at all in columns {chosen}", file=file, line=header_line)
    # Query-major order, so the table's queries keep the file's order.
    order = np.argsort(long_lines, kind="stable")
    return long.iloc[order], long_lines[order], chosen
