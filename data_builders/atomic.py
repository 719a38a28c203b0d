"""The one way capsat publishes a file or a folder: build it under a temporary name beside the
target, then rename it into place. A reader sees the old version or the new one, never a
half-written one, and a crash leaves at most a temporary name that nothing reads.

- ``atomic_path(path)``: a context yielding the temporary path to write (for writers that take
  a path: Parquet, safetensors, numpy); on success it is fsynced and renamed onto ``path``.
- ``atomic_open(path, mode)``: the same for a file handle.
- ``write_text`` / ``write_json``: whole text or JSON documents.
- ``publish(tmp, path)``: the last step alone, for a streaming writer's temporary file.
- ``atomic_folder(target)``: a context yielding a fresh temporary folder; on success it replaces
  ``target`` (the old folder stays complete until the new one is).

Temporary names carry the host and process id, so processes sharing a disk never collide.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def temporary_name(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """The hidden sibling a file or folder is built under before it is published."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{socket.gethostname()}-{os.getpid()}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def publish(tmp: Path, path: str | os.PathLike, *, fsync: bool = True) -> None:
    """Rename a finished temporary file onto ``path`` (for streaming writers that keep their
    temporary file open across calls and publish it when they close)."""
    if fsync:
        _fsync(tmp)
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; publish it there if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        publish(tmp, path, fsync=fsync)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8",
                fsync: bool = True) -> Iterator[IO]:
    """``open`` for writing whose result appears under ``path`` only when the block succeeds."""
    if "b" in mode:
        encoding = None
    with atomic_path(path, fsync=False) as tmp:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, data, *, indent: int | None = 1) -> Path:
    """JSON (UTF-8, a trailing newline), atomically."""
    with atomic_open(path) as fh:
        json.dump(data, fh, indent=indent, ensure_ascii=False, default=_json_default)
        fh.write("\n")
    return Path(path)


def _json_default(value):
    # numpy scalars and arrays reach JSON writers from metrics and summaries.
    for cast in ("item", "tolist"):
        if hasattr(value, cast):
            return getattr(value, cast)()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextmanager
def atomic_folder(target: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; if the block succeeds, it replaces
    ``target`` (whose old contents stay readable until the new folder is complete).
    ``replace=False``: a ``target`` that exists by then (another process finished the same
    work first) is kept and ours is dropped."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    old = temporary_name(target, "old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        moved = False
        if target.exists() and not replace:
            return
        if target.exists():
            os.replace(target, old)
            moved = True
        try:
            os.replace(tmp, target)
        except BaseException:
            if moved:
                os.replace(old, target)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
