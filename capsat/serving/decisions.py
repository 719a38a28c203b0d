"""Append-only JSONL files that a crash never leaves with a partial line.

Each record is encoded first and written with a single ``os.write`` on an ``O_APPEND``
descriptor: the kernel places every write at the end of the file as one piece, so concurrent
writers interleave whole lines, and a process killed (even with SIGKILL) between writes leaves
only whole lines. A torn last line can still come from a power cut or from another writer, so
opening a log checks its end: a last line without its newline is cut off, reported, and kept
aside in ``PATH.torn`` for inspection.

The decision log of ``capsat serve`` is one of these (one JSON object per line; with
``--log-prompts`` the routed text is under ``instruction``, so ``capsat route --input
decisions.jsonl`` re-routes it); so are the replies of ``capsat aptitude run``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterator

from data_builders.atomic import _json_default as _plain  # numpy values in records
from data_builders.jsonl import iter_jsonl


def repair_torn_tail(path: str | os.PathLike) -> int:
    """Cut a last line that lacks its newline; return how many bytes were cut (0: none)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        # Find the last newline, reading back in blocks (lines are short, logs may be long).
        end, block = size, 1 << 16
        cut = 0
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                cut = start + i + 1
                break
            end = start
        fh.seek(cut)
        torn = fh.read()
        with open(str(path) + ".torn", "ab") as aside:
            aside.write(torn + b"\n")
        fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())
    return size - cut


class AppendLog:
    """An append-only JSONL file; ``append(record)`` writes one whole line."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = repair_torn_tail(self.path)
        if self.repaired_bytes:
            print(f"{self.path}: cut a torn last line of {self.repaired_bytes} bytes (a crash "
                  f"mid-write); kept aside in {self.path}.torn", file=sys.stderr)
        self.fsync = fsync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lines_written = 0

    def append(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False, default=_plain) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk; never leave the half line in place
            os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - written)
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")
        if self.fsync:
            os.fsync(self._fd)
        self.lines_written += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "AppendLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_log(path: str | os.PathLike) -> Iterator[dict]:
    """Every record of a log, checking each line is one JSON object."""
    for _, record in iter_jsonl(path):
        yield record
