"""Importers: one module per source, each with ``build(raw_dir) -> OutcomeTable``.

``load_outcomes(name_or_path)`` is what the rest of capsat calls: a registered name loads the
compact Parquet shipped inside the package (so a fresh machine needs no ``../shared``); a
folder written by ``OutcomeTable.save_to_disk`` loads through ``datasets`` (memory-mapped);
any other path goes through the generic importer.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..errors import DataError
from ..outcomes import OutcomeTable

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "shipped"

#: name -> module under data_builders.sources that builds it from the raw files.
SOURCES: dict[str, str] = {
    "mmlu_pro": "mmlu_pro",
    "llmrouter": "llmrouter",
    "routerbench": "routerbench",
}


def shipped_path(name: str) -> Path:
    return SHIPPED_DIR / f"{name}.parquet"


def build_source(name: str, raw_dir: str | os.PathLike) -> OutcomeTable:
    """Build a registered source from its raw files (``raw_dir`` is e.g. ``../shared/data``)."""
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; known: {sorted(SOURCES)}")
    module = importlib.import_module(f"{__name__}.{SOURCES[name]}")
    return module.build(Path(raw_dir))


def load_outcomes(name_or_path: str | os.PathLike, **generic_options) -> OutcomeTable:
    """A registered data set by name (shipped Parquet), or a user's file by path."""
    key = str(name_or_path)
    if key in SOURCES:
        path = shipped_path(key)
        if not path.exists():
            raise DataError(f"shipped data for {key!r} is missing; rebuild it with "
                            f"`python -m data_builders build {key} --raw ../shared/data`",
                            file=str(path))
        return OutcomeTable.load(path)
    path = Path(key)
    if not path.exists():
        raise DataError(f"no such file, and not a registered data set ({sorted(SOURCES)})",
                        file=key)
    if path.is_dir():  # a `datasets` folder (OutcomeTable.save_to_disk)
        if generic_options:
            raise DataError(f"options {sorted(generic_options)} are for files, not a datasets "
                            f"folder", file=key)
        return OutcomeTable.load_from_disk(path)
    from .generic import read_outcomes

    return read_outcomes(path, **generic_options)
