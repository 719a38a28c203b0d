"""What a router was fitted on, saved with it, so that nothing scores it on data it has seen.

Every router records, when it is fitted (or trained), the data set's name, the split and seed
when known, the ids of every query it read (train and validation, and CapSAT's aptitude
items), a digest of each of those queries' normalised text (so a log without ids, or a copy of
the same question under another id, is caught too), and each model's mean score on its
training part (the reference "best single model" of a route summary). ``capsat eval``,
``capsat explain`` and the realised figures of ``capsat route`` refuse overlapping data, and
a router without a record is refused unless the user passes ``--allow-unknown-provenance``.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from data_builders.errors import DataError
from data_builders.outcomes import OutcomeTable
from data_builders.splits import normalise_text

UNKNOWN_PROVENANCE_FLAG = "--allow-unknown-provenance"


def text_digest(text: str) -> str:
    """16 hex digits of sha1 over the normalised text (the form splits compare texts in)."""
    return hashlib.sha1(normalise_text(text).encode("utf-8")).hexdigest()[:16]


@dataclass
class Provenance:
    data: str
    query_ids: list[str]
    text_digests: list[str]
    model_accuracy: dict[str, float]  # mean training score per model
    split: str | None = None
    seed: int | None = None
    parts: list[str] = field(default_factory=lambda: ["train", "validation"])

    @classmethod
    def from_tables(cls, train: OutcomeTable, *others: OutcomeTable | None,
                    split: str | None = None, seed: int | None = None,
                    parts: Sequence[str] = ("train", "validation")) -> "Provenance":
        tables = [t for t in (train, *others) if t is not None]
        ids = list(dict.fromkeys(q for t in tables for q in t.query_ids))
        texts = list(dict.fromkeys(text_digest(x) for t in tables for x in t.texts))
        means = train.scores.mean(axis=0, skipna=True)
        return cls(train.name, ids, texts, {m: float(v) for m, v in means.items()}, split,
                   seed, list(parts))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict | None, *, file: str | None = None) -> "Provenance | None":
        if values is None:
            return None
        if not isinstance(values, dict):
            raise DataError("must be an object or null", file=file, field="fitted_on")
        names = {f for f in cls.__dataclass_fields__}
        missing = sorted(names - set(values))
        unknown = sorted(set(values) - names)
        if missing or unknown:
            raise DataError(f"missing {missing} / unknown {unknown} key(s)", file=file,
                            field="fitted_on")
        return cls(**values)

    def best_model(self, models: Iterable[str]) -> str | None:
        """The model with the best training accuracy among ``models`` (None if none known)."""
        known = [m for m in models if m in self.model_accuracy]
        return max(known, key=lambda m: self.model_accuracy[m]) if known else None

    def overlap(self, query_ids: Sequence[str] | None = None,
                texts: Sequence[str] | None = None) -> list[int]:
        """Positions of the rows (given by id and/or text) that this router has seen."""
        ids, digests = set(self.query_ids), set(self.text_digests)
        n = len(query_ids if query_ids is not None else texts or [])
        seen = []
        for i in range(n):
            if (query_ids is not None and str(query_ids[i]) in ids) or (
                    texts is not None and text_digest(texts[i]) in digests):
                seen.append(i)
        return seen


def refusal(router, query_ids: Sequence[str] | None, texts: Sequence[str] | None, *,
            allow_unknown: bool = False, what: str = "these queries") -> str | None:
    """Why ``router`` must not be scored on these rows (None: it may). A router without a
    record is refused unless ``allow_unknown``; one that saw any of the rows is refused."""
    provenance = getattr(router, "fitted_on", None)
    if provenance is None:
        if allow_unknown:
            return None
        return (f"has no record of the data it was fitted on, so it may have seen {what}; "
                f"pass {UNKNOWN_PROVENANCE_FLAG} to score it anyway")
    seen = provenance.overlap(query_ids, texts)
    if seen:
        example = [str(query_ids[i]) if query_ids is not None else texts[i][:40]
                   for i in seen[:3]]
        total = len(query_ids if query_ids is not None else texts)
        return (f"was fitted on {len(seen)} of {what} ({total}), e.g. {example}: score it on "
                f"data it has not seen (the test part of the split it was fitted for)")
    return None
