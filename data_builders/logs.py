"""Instruction logs built from outcome tables: what `capsat route` reads.

One JSON object per line: ``id``, ``instruction``, ``task`` and, for every model with a record,
the real outcome as ``score|MODEL`` (and ``cost|MODEL`` where the table has costs). Routing
ignores the labels; the summary uses them to report realised accuracy and cost.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

from .atomic import atomic_open
from .outcomes import OutcomeTable

SCORE_PREFIX = "score|"
COST_PREFIX = "cost|"


def log_rows(table: OutcomeTable, query_ids: Sequence[str] | None = None) -> list[dict]:
    """The log rows of ``query_ids`` (default: every query), in that order, with labels."""
    table = table if query_ids is None else table.subset(list(query_ids))
    rows = []
    for i, (qid, text, task) in enumerate(zip(table.query_ids, table.texts, table.tasks)):
        row = {"id": qid, "instruction": text, "task": task}
        for prefix, frame in ((SCORE_PREFIX, table.scores), (COST_PREFIX, table.costs)):
            if frame is None:
                continue
            for model, value in frame.iloc[i].items():
                if not math.isnan(value):
                    row[prefix + model] = float(value)
        rows.append(row)
    return rows


def write_log(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write ``rows`` as JSONL, atomically."""
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)

