"""The one reader of JSON-lines files: every record checked to be a JSON object, every
problem a DataError naming the file and the line."""
from __future__ import annotations

import json
import os
from typing import Iterator


def iter_jsonl(path: str | os.PathLike, *, skip_blank: bool = False
               ) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, record)`` for every line of ``path`` (1-based). A blank line is
    an error unless ``skip_blank``."""
    from .errors import DataError

    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DataError("no such file", file=str(path)) from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                if skip_blank:
                    continue
                raise DataError("blank line", file=str(path), line=number)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"invalid JSON: {err.msg}", file=str(path),
                                line=number) from None
            if not isinstance(record, dict):
                raise DataError("expected a JSON object", file=str(path), line=number)
            yield number, record
