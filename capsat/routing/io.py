"""Reading instruction logs row by row, and writing routed outputs.

Readers stream: JSONL and CSV line by line, Parquet by record batches; ``.gz`` is read
directly. Each yields ``(ordinal, line, raw)`` with ``ordinal`` the 0-based record index (what
chunks are cut by) and ``line`` the place an editor shows: the physical line for JSONL, the
line where the record starts for CSV (the header is line 1), the 1-based row for Parquet.
``raw`` is the undecoded text (JSONL), a field dict (CSV, Parquet), or a ``BadRow`` when the
record cannot be read at all.

``parse_row`` turns one raw record into a ``Row`` (instruction text, id, outcome labels) or a
``BadRow`` (line, reason, field, excerpt): a bad row is never dropped silently.

Chat logs: when the instruction field holds OpenAI-style ``messages`` (a list of
``{"role", "content"}``), the last ``user`` turn is the instruction; its content may be a
string or a list of parts, whose ``text`` parts are joined by newlines (other parts, e.g.
images, are ignored). System prompts and earlier turns are not scored (the routers were
fitted on single instructions); the summary counts the rows that had them.

Outcome labels (optional, for realised accuracy and cost): flat fields ``score|MODEL``
(0..1) and ``cost|MODEL`` (cost of that call) in any format.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_builders.atomic import atomic_path, publish, temporary_name
from data_builders.errors import DataError
from data_builders.logs import COST_PREFIX, SCORE_PREFIX  # the label fields of a log
from data_builders.outcomes import MAX_QUERY_CHARS

FORMATS = ("jsonl", "csv", "parquet")
PROB_PREFIX = "p|"
EXCERPT_CHARS = 200
#: Why a row was rejected (the errors file's ``reason``).
REASONS = ("blank_line", "invalid_json", "truncated_json", "not_an_object", "bad_csv_row",
           "missing_field",
           "non_text_instruction", "empty_instruction", "too_long", "bad_messages",
           "no_user_turn", "bad_id", "bad_label", "bad_task")


# ----------------------------------------------------------------- formats and files
def detect_format(path: str | os.PathLike) -> str:
    """``jsonl`` / ``csv`` / ``parquet`` from the file name (``.gz`` allowed for text)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"),
                        (".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            if fmt == "parquet" and Path(path).name.lower().endswith(".gz"):
                raise DataError("gzip around Parquet is not supported (Parquet compresses "
                                "itself)", file=str(path))
            return fmt
    raise DataError(f"cannot tell the format from the name; use one of "
                    f"{', '.join(FORMATS)} (optionally .gz for text)", file=str(path))


def is_gzip(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".gz")


def open_text(path: str | os.PathLike, mode: str = "rt") -> IO:
    """Open a text file, transparently gzip-compressed when the name ends in ``.gz``."""
    if is_gzip(path):
        return gzip.open(path, mode, encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def count_records(path: str | os.PathLike, fmt: str) -> int | None:
    """Records in the file (for the progress bar's ETA); cheap relative to routing."""
    if fmt == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "csv":
        return None  # quoted newlines make a line count wrong; the bar shows the rate only
    opener = gzip.open if is_gzip(path) else open
    count, last = 0, b"\n"
    with opener(path, "rb") as fh:
        while block := fh.read(1 << 22):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


# ----------------------------------------------------------------- rows
@dataclass
class BadRow:
    """A rejected input row: where, why, and a short excerpt of what was there."""

    line: int
    reason: str
    field: str | None
    message: str
    raw: str = ""
    id: str | None = None

    def to_json(self) -> dict:
        out = {"line": self.line, "reason": self.reason, "field": self.field,
               "message": self.message, "raw": self.raw[:EXCERPT_CHARS]}
        if self.id is not None:
            out["id"] = self.id
        return out

    def error(self, file: str) -> DataError:
        return DataError(f"{self.reason}: {self.message}", file=file, line=self.line,
                         field=self.field)


@dataclass
class Row:
    line: int
    text: str
    id: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    had_system: bool = False
    had_earlier_turns: bool = False
    task: str | None = None  # the row's task label (None: routed from its text alone)


@dataclass(frozen=True)
class RowSpec:
    """How to read one row: which field holds the instruction, the id, the labels."""

    field: str = "instruction"
    id_field: str | None = None
    max_chars: int = MAX_QUERY_CHARS
    chat: bool = False  # CSV: the field is a JSON-encoded messages list
    label_models: tuple[str, ...] = ()
    task_field: str | None = None  # a row without a value there has no task label


def iter_raw(path: str | os.PathLike, fmt: str, columns: Sequence[str] | None = None
             ) -> Iterator[tuple[int, int, object]]:
    """Yield ``(ordinal, line, raw)`` for every record of the file, in order."""
    if fmt == "jsonl":
        yield from _iter_jsonl(path)
    elif fmt == "csv":
        yield from _iter_csv(path)
    elif fmt == "parquet":
        yield from _iter_parquet(path, columns)
    else:
        raise DataError(f"unknown format {fmt!r}; known: {FORMATS}", file=str(path))


def _iter_jsonl(path) -> Iterator[tuple[int, int, object]]:
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rb") as fh:
        for ordinal, raw in enumerate(fh):
            yield ordinal, ordinal + 1, raw


def _iter_csv(path) -> Iterator[tuple[int, int, object]]:
    with open_text(path) as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"unreadable CSV header: {err}", file=str(path), line=1) from err
        if len(set(header)) != len(header):
            raise DataError(f"duplicate column names in the header: {header}", file=str(path),
                            line=1)
        ordinal, start = 0, reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield ordinal, start, BadRow(start, "bad_csv_row", None, str(err))
            else:
                if len(values) != len(header):
                    yield ordinal, start, BadRow(
                        start, "bad_csv_row", None, f"{len(values)} values for {len(header)} "
                        f"columns", ",".join(values))
                else:
                    yield ordinal, start, dict(zip(header, values))
            ordinal, start = ordinal + 1, reader.line_num + 1


def _iter_parquet(path, columns) -> Iterator[tuple[int, int, object]]:
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    wanted = None if columns is None else [c for c in columns if c in names]
    ordinal = 0
    for batch in parquet.iter_batches(batch_size=8192, columns=wanted):
        for record in batch.to_pylist():
            yield ordinal, ordinal + 1, record
            ordinal += 1


def decode(raw, line: int) -> dict | BadRow:
    """A record as a dict, or why it is not one (JSONL bytes are parsed here)."""
    if isinstance(raw, BadRow) or isinstance(raw, dict):
        return raw
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    if not text.strip():
        return BadRow(line, "blank_line", None, "blank line", "")
    text = text.rstrip("\r\n")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        if err.pos >= len(text.rstrip()) - 1 or err.msg.startswith("Unterminated"):
            return BadRow(line, "truncated_json", None, f"the line ends inside a JSON value "
                          f"(truncated? {err.msg} at column {err.colno})", text)
        return BadRow(line, "invalid_json", None, f"{err.msg} at column {err.colno}", text)
    if not isinstance(record, dict):
        return BadRow(line, "not_an_object", None, f"a JSON {type(record).__name__}, not an "
                                                   f"object", text.rstrip("\n"))
    return record


def _excerpt(record: dict) -> str:
    try:
        return json.dumps(record, ensure_ascii=False, default=str)[:EXCERPT_CHARS]
    except (TypeError, ValueError):
        return repr(record)[:EXCERPT_CHARS]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def last_user_turn(messages) -> tuple[str | None, str, bool, bool]:
    """(text or None, problem, had_system, had_earlier_turns) for a chat ``messages`` list."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None, "bad_messages", False, False
    had_system = any(m.get("role") in ("system", "developer") for m in messages)
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        return None, "no_user_turn", had_system, False
    last = users[-1]
    earlier = any(m.get("role") not in ("system", "developer") for m in messages[:last])
    content = messages[last].get("content")
    if isinstance(content, list):
        parts = [p.get("text") for p in content
                 if isinstance(p, dict) and p.get("type", "text") == "text"]
        if not all(isinstance(p, str) for p in parts):
            return None, "non_text_instruction", had_system, earlier
        content = "\n".join(parts)
    if not isinstance(content, str):
        return None, "non_text_instruction", had_system, earlier
    return content, "", had_system, earlier


def parse_row(raw, line: int, spec: RowSpec) -> Row | BadRow:
    """One raw record -> a routable ``Row``, or a ``BadRow`` saying why not."""
    record = decode(raw, line)
    if isinstance(record, BadRow):
        return record
    row_id = None
    if spec.id_field is not None:
        value = record.get(spec.id_field)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            return BadRow(line, "bad_id" if spec.id_field in record else "missing_field",
                          spec.id_field, f"id must be a non-empty string or integer, got "
                                         f"{value!r}", _excerpt(record))
        row_id = str(value)
    if spec.field not in record or _missing(record[spec.field]):
        return BadRow(line, "missing_field", spec.field, "no instruction in this row",
                      _excerpt(record), row_id)
    value = record[spec.field]
    had_system = earlier = False
    if spec.chat and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            return BadRow(line, "bad_messages", spec.field, f"not a JSON messages list: "
                                                            f"{err.msg}", _excerpt(record), row_id)
    if isinstance(value, list):
        value, problem, had_system, earlier = last_user_turn(value)
        if value is None:
            message = {"bad_messages": "messages must be a list of {role, content} objects",
                       "no_user_turn": "the messages hold no user turn",
                       "non_text_instruction": "the last user turn has no text content"}[problem]
            return BadRow(line, problem, spec.field, message, _excerpt(record), row_id)
    if not isinstance(value, str):
        return BadRow(line, "non_text_instruction", spec.field,
                      f"instruction is a {type(value).__name__}, not text", _excerpt(record),
                      row_id)
    if not value.strip():
        return BadRow(line, "empty_instruction", spec.field, "instruction is empty",
                      _excerpt(record), row_id)
    if len(value) > spec.max_chars:
        return BadRow(line, "too_long", spec.field, f"{len(value)} characters > max_chars "
                                                    f"{spec.max_chars}", value[:EXCERPT_CHARS],
                      row_id)
    task = None
    if spec.task_field is not None and not _missing(record.get(spec.task_field)):
        task = record[spec.task_field]
        if not isinstance(task, str):
            return BadRow(line, "bad_task", spec.task_field, f"task label must be text, got "
                                                            f"{task!r}", _excerpt(record), row_id)
        task = task.strip() or None
    row = Row(line, value, row_id, had_system=had_system, had_earlier_turns=earlier, task=task)
    for model in spec.label_models:
        for prefix, target in ((SCORE_PREFIX, row.scores), (COST_PREFIX, row.costs)):
            name = prefix + model
            label = record.get(name)
            if _missing(label) or label == "":
                continue
            try:
                number = float(label) if not isinstance(label, bool) else float("nan")
            except (TypeError, ValueError):
                number = float("nan")
            bad = not math.isfinite(number) or number < 0 or (prefix == SCORE_PREFIX
                                                              and number > 1)
            if bad:
                return BadRow(line, "bad_label", name, f"label must be a number"
                              f"{' in [0, 1]' if prefix == SCORE_PREFIX else ' >= 0'}, got "
                              f"{label!r}", _excerpt(record), row_id)
            target[model] = number
    return row


# ----------------------------------------------------------------- atomic writes
def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


# ----------------------------------------------------------------- output writers
def _float(value: float, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


class OutputWriter:
    """Writes routed rows in one of the formats; ``.gz`` text is gzip with a fixed header
    (mtime 0), so the same rows always give the same bytes."""

    def __init__(self, path: Path, fmt: str, models: Sequence[str], has_ids: bool,
                 has_costs: bool):
        self.path, self.fmt, self.models = Path(path), fmt, list(models)
        self.has_ids, self.has_costs = has_ids, has_costs
        self.tmp = temporary_name(self.path)
        self._raw = self._text = self._parquet = None
        if fmt == "parquet":
            if is_gzip(path):
                raise DataError("gzip around Parquet is not supported", file=str(path))
            return
        self._raw = open(self.tmp, "wb")
        stream = (gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
                  if is_gzip(path) else self._raw)
        self._gzip = stream if stream is not self._raw else None
        self._text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
        if fmt == "csv":
            self._csv = csv.writer(self._text, lineterminator="\n")
            self._csv.writerow(self.columns())

    def columns(self) -> list[str]:
        head = (["id"] if self.has_ids else []) + ["line", "model"]
        head += ["expected_cost"] if self.has_costs else []
        return head + [PROB_PREFIX + m for m in self.models]

    def write(self, lines: np.ndarray, ids: Sequence[str] | None, chosen: np.ndarray,
              probs: np.ndarray, chosen_cost: np.ndarray | None) -> None:
        """One block of routed rows; ``chosen`` holds candidate indices."""
        names = [self.models[j] for j in chosen]
        if self.fmt == "parquet":
            self._write_parquet(lines, ids, names, probs, chosen_cost)
            return
        rounded = np.round(probs, 6)
        for i in range(len(lines)):
            cost = _float(chosen_cost[i], 6) if self.has_costs else None
            if self.fmt == "jsonl":
                out = {"id": ids[i]} if self.has_ids else {}
                out["line"] = int(lines[i])
                out["model"] = names[i]
                if self.has_costs:
                    out["expected_cost"] = cost
                out["p"] = dict(zip(self.models, rounded[i].tolist()))
                self._text.write(json.dumps(out, ensure_ascii=False) + "\n")
            else:
                cells = ([ids[i]] if self.has_ids else []) + [int(lines[i]), names[i]]
                cells += ([("" if cost is None else repr(cost))] if self.has_costs else [])
                self._csv.writerow(cells + [repr(p) for p in rounded[i].tolist()])

    def _write_parquet(self, lines, ids, names, probs, chosen_cost) -> None:
        columns = {}
        if self.has_ids:
            columns["id"] = pa.array(list(ids), pa.string())
        columns["line"] = pa.array(np.asarray(lines, dtype=np.int64))
        columns["model"] = pa.array(names, pa.string())
        if self.has_costs:
            columns["expected_cost"] = pa.array(np.asarray(chosen_cost, dtype=np.float64))
        for j, m in enumerate(self.models):
            columns[PROB_PREFIX + m] = pa.array(np.asarray(probs[:, j], dtype=np.float64))
        table = pa.table(columns)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.tmp, table.schema)
        self._parquet.write_table(table)

    def close(self) -> None:
        """Finish the file and publish it under its final name (atomically)."""
        if self.fmt == "parquet":
            if self._parquet is None:  # no routed row at all: still an output with the schema
                fields = ([("id", pa.string())] if self.has_ids else []) + [
                    ("line", pa.int64()), ("model", pa.string())]
                fields += [("expected_cost", pa.float64())] if self.has_costs else []
                fields += [(PROB_PREFIX + m, pa.float64()) for m in self.models]
                self._parquet = pq.ParquetWriter(self.tmp, pa.schema(fields))
            self._parquet.close()
        else:
            self._text.flush()
            self._text.detach()
            if self._gzip is not None:
                self._gzip.close()
            self._raw.close()
        publish(self.tmp, self.path)

    def abort(self) -> None:
        for handle in (self._parquet, self._raw):
            try:
                if handle is not None:
                    handle.close()
            except Exception:  # noqa: BLE001 - already failing; the tmp file is removed below
                pass
        self.tmp.unlink(missing_ok=True)
