"""Train / validation / test splits of an outcome table: by query, by model, or by task.

Every split keeps each query *text* in one part only: queries are grouped by their normalised
text (stripped, whitespace collapsed, casefolded) and a group is never cut, because MMLU-Pro
(and other sets) repeat the same question under different ids, and a router that saw the text
in train would be scored on a memorised answer. Query splits are stratified by task, and the
validation part is carved from train the same way. Everything is seeded and deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import DataError
from .outcomes import OutcomeTable

SPLIT_KINDS = ("query", "model", "family", "task")
#: Kinds that hold models out (evaluated on the test queries after onboarding).
MODEL_SPLITS = ("model", "family")

#: Model families, by a case-insensitive pattern on the model's name, in order (first match
#: wins); a model matching none is in the family "other". Fine-tunes go with their base.
FAMILY_PATTERNS = (
    ("llama-2", r"llama-2|code-llama|wizardlm"),
    ("llama-3", r"llama-?3|nemotron|chatqa"),
    ("mistral", r"mistral|mixtral|mathstral"),
    ("qwen", r"qwen"),
    ("yi", r"(^|[^a-z])yi-"),
    ("gemini", r"gemini"),
    ("gemma", r"gemma"),
    ("gpt", r"gpt-"),
    ("claude", r"claude"),
)


def model_family(model: str) -> str:
    """The family of a model name (``FAMILY_PATTERNS``; "other" when none matches)."""
    import re

    name = model.casefold()
    for family, pattern in FAMILY_PATTERNS:
        if re.search(pattern, name):
            return family
    return "other"


def model_families(models: Sequence[str]) -> dict[str, list[str]]:
    """family -> its models (in the given order), families in order of first appearance."""
    out: dict[str, list[str]] = {}
    for m in models:
        out.setdefault(model_family(m), []).append(m)
    return out

# Separate random streams, so that e.g. the query split of kind="model" with seed s is the
# same as the query split of kind="query" with seed s, whatever the models drawn.
(_STREAM_TEST, _STREAM_VALIDATION, _STREAM_MODELS, _STREAM_TASKS,
 _STREAM_VALIDATION_MODELS) = range(5)


def normalise_text(text: str) -> str:
    """The form two query texts must share to count as the same query."""
    return " ".join(str(text).split()).casefold()


@dataclass(frozen=True)
class Split:
    """Which queries and models go where. ``validation`` is carved from train (for
    hyper-parameters and early stopping); ``test_models`` are the models evaluated, the
    held-out ones for ``kind="model"`` or ``"family"`` (``held_out_families``) and the same as
    ``train_models`` otherwise."""

    kind: str
    seed: int
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    train_models: tuple[str, ...]
    test_models: tuple[str, ...]
    held_out_tasks: tuple[str, ...] = ()
    held_out_families: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in SPLIT_KINDS:
            raise DataError(f"unknown split kind {self.kind!r}; known: {list(SPLIT_KINDS)}",
                            field="kind")
        for name in ("train", "validation", "test", "train_models", "test_models",
                     "held_out_tasks", "held_out_families"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise DataError(f"Split.{name} must be a sequence of names, not one string",
                                field=name)
            object.__setattr__(self, name, tuple(str(v) for v in value))
        parts = {"train": set(self.train), "validation": set(self.validation),
                 "test": set(self.test)}
        for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
            shared = parts[a] & parts[b]
            if shared:
                raise DataError(f"{len(shared)} query id(s) are in both {a} and {b}, e.g. "
                                f"{sorted(shared)[:3]}", field=b)
        if not self.train_models or not self.test_models:
            raise DataError("a split needs at least one train model and one test model",
                            field="train_models" if not self.train_models else "test_models")
        if self.kind in MODEL_SPLITS and set(self.train_models) & set(self.test_models):
            raise DataError(f"a {self.kind} split must hold its test models out of training",
                            field="test_models")
        if self.kind not in MODEL_SPLITS and self.train_models != self.test_models:
            raise DataError(f"a {self.kind} split evaluates the models it trains on",
                            field="test_models")
        if self.held_out_tasks and self.kind != "task":
            raise DataError("held_out_tasks is only for kind='task'", field="held_out_tasks")
        if self.held_out_families and self.kind != "family":
            raise DataError("held_out_families is only for kind='family'",
                            field="held_out_families")

    # -------------------------------------------------------------- tables
    def tables(self, table: OutcomeTable) -> tuple[OutcomeTable, OutcomeTable, OutcomeTable]:
        """(train, validation, test): train and validation on ``train_models``, test on
        ``test_models``. Raises DataError if ``table`` lacks a query id or model of the split."""
        return (table.subset(list(self.train), list(self.train_models)),
                table.subset(list(self.validation), list(self.train_models)),
                table.subset(list(self.test), list(self.test_models)))

    def sizes(self) -> dict:
        return {"train_queries": len(self.train), "validation_queries": len(self.validation),
                "test_queries": len(self.test), "train_models": len(self.train_models),
                "test_models": len(self.test_models), "held_out_tasks": len(self.held_out_tasks),
                "held_out_families": len(self.held_out_families)}

    # ---------------------------------------------------------------- JSON
    def to_json(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "train": list(self.train),
                "validation": list(self.validation), "test": list(self.test),
                "train_models": list(self.train_models), "test_models": list(self.test_models),
                "held_out_tasks": list(self.held_out_tasks),
                "held_out_families": list(self.held_out_families)}

    @classmethod
    def from_json(cls, d: dict, *, file: str | None = None) -> "Split":
        """Every field must be present: a saved split is never completed with defaults."""
        if not isinstance(d, dict):
            raise DataError(f"a split must be a JSON object, got {type(d).__name__}", file=file)
        names = ("kind", "seed", "train", "validation", "test", "train_models", "test_models",
                 "held_out_tasks", "held_out_families")
        for name in names:
            if name not in d:
                raise DataError("missing from the saved split", file=file, field=name)
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise DataError(f"unknown field(s) {unknown} in the saved split", file=file,
                            field=unknown[0])
        if not isinstance(d["seed"], int) or isinstance(d["seed"], bool):
            raise DataError(f"seed must be an integer, got {d['seed']!r}", file=file,
                            field="seed")
        for name in names[2:]:
            if not isinstance(d[name], list) or not all(isinstance(v, str) for v in d[name]):
                raise DataError("must be a list of strings", file=file, field=name)
        return cls(**{name: d[name] for name in names})


# ------------------------------------------------------------------ making splits
def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def _check_fraction(value: float, name: str) -> float:
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise DataError(f"must be a fraction strictly between 0 and 1, got {value!r}", field=name)
    return float(value)


def _text_groups(queries: pd.DataFrame) -> pd.DataFrame:
    """One row per normalised text: its query ids (table order), size and task.

    A group whose ids span several tasks is stratified under its most common task (ties: the
    alphabetically first), which is deterministic."""
    keys = queries["query"].map(normalise_text).to_numpy()
    frame = pd.DataFrame({"key": keys, "query_id": queries.index.to_numpy(),
                          "task": queries["task"].to_numpy()})
    counts = frame.groupby(["key", "task"], sort=False).size().rename("n").reset_index()
    main_task = (counts.sort_values(["key", "n", "task"], ascending=[True, False, True])
                 .drop_duplicates("key").set_index("key")["task"])
    groups = frame.groupby("key", sort=False).agg(ids=("query_id", list))
    groups["task"] = main_task.reindex(groups.index).to_numpy()
    groups["size"] = groups["ids"].map(len)
    return groups.reset_index(drop=True)


def _grouped_stratified_cut(queries: pd.DataFrame, fraction: float, rng: np.random.Generator
                            ) -> tuple[list[str], list[str]]:
    """Split ``queries`` into (rest, cut), cut holding about ``fraction`` of every task's
    queries, never separating two queries of the same normalised text."""
    groups = _text_groups(queries)
    cut_ids: set[str] = set()
    for task in sorted(groups["task"].unique()):
        mine = groups[groups["task"] == task]
        target = round(fraction * int(mine["size"].sum()))
        order = rng.permutation(len(mine))
        sizes = mine["size"].to_numpy()[order]
        before = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        # Take groups in shuffled order until the target is reached (groups are tiny, so the
        # overshoot is at most one duplicate).
        chosen = order[before < target]
        for ids in mine["ids"].to_numpy()[chosen]:
            cut_ids.update(ids)
    rest = [q for q in queries.index if q not in cut_ids]
    cut = [q for q in queries.index if q in cut_ids]
    return rest, cut


def _draw(names: Sequence[str], fraction: float, rng: np.random.Generator, what: str
          ) -> list[str]:
    """A seeded ``fraction`` of ``names`` (at least one, and at least one left over)."""
    if len(names) < 2:
        raise DataError(f"holding out {what}s needs at least two {what}s, got {list(names)}",
                        field=what)
    count = min(max(1, round(fraction * len(names))), len(names) - 1)
    picked = set(rng.choice(len(names), size=count, replace=False).tolist())
    return [n for i, n in enumerate(names) if i in picked]


def _check_held_out(names: Sequence[str] | str, known: Sequence[str], what: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DataError(f"unknown {what}(s) {unknown}; known: {list(known)}", field=what)
    if not names:
        raise DataError(f"the list of held-out {what}s is empty", field=what)
    if len(names) >= len(known):
        raise DataError(f"holding out every {what} leaves nothing to train on", field=what)
    return names


def make_split(table: OutcomeTable, kind: str, *, test_size: float = 0.2,
               validation_size: float = 0.1, seed: int = 0,
               held_out_models: Sequence[str] | None = None,
               held_out_tasks: Sequence[str] | None = None,
               held_out_families: Sequence[str] | None = None) -> Split:
    """Split ``table`` by ``kind``:

    - ``"query"``: ``test_size`` of every task's queries go to test.
    - ``"model"``: ``held_out_models`` (or a seeded ``test_size`` fraction of the models) are
      evaluated on the test queries only; queries are split as for ``"query"``.
    - ``"family"``: as ``"model"``, holding out whole model families (``model_family``):
      ``held_out_families``, or families drawn in a seeded order until at least ``test_size``
      of the models are held out.
    - ``"task"``: ``held_out_tasks`` (or a seeded ``test_size`` fraction of the tasks) make the
      test part; train and validation come from the other tasks.

    ``validation_size`` is a fraction of what remains for training. No normalised query text is
    in two parts.
    """
    if kind not in SPLIT_KINDS:
        raise DataError(f"unknown split kind {kind!r}; known: {list(SPLIT_KINDS)}", field="kind")
    test_size = _check_fraction(test_size, "test_size")
    validation_size = _check_fraction(validation_size, "validation_size")
    if held_out_models is not None and kind != "model":
        raise DataError(f"held_out_models is only for kind='model', not {kind!r}",
                        field="held_out_models")
    if held_out_tasks is not None and kind != "task":
        raise DataError(f"held_out_tasks is only for kind='task', not {kind!r}",
                        field="held_out_tasks")
    if held_out_families is not None and kind != "family":
        raise DataError(f"held_out_families is only for kind='family', not {kind!r}",
                        field="held_out_families")
    families_out: list[str] = []
    models = table.models
    tasks_out: list[str] = []
    if kind == "task":
        known_tasks = sorted(table.queries["task"].unique())
        tasks_out = (_check_held_out(held_out_tasks, known_tasks, "task")
                     if held_out_tasks is not None
                     else _draw(known_tasks, test_size, _rng(seed, _STREAM_TASKS), "task"))
        in_test = table.queries["task"].isin(tasks_out)
        test = list(table.queries.index[in_test])
        test_keys = set(table.queries.loc[in_test, "query"].map(normalise_text))
        # Queries of the training tasks whose text also occurs in a held-out task go nowhere.
        keep = ~in_test & ~table.queries["query"].map(normalise_text).isin(test_keys)
        remaining = table.queries[keep]
        train_models = test_models = models
    else:
        remaining_ids, test = _grouped_stratified_cut(table.queries, test_size,
                                                      _rng(seed, _STREAM_TEST))
        remaining = table.queries.loc[remaining_ids]
        if kind in MODEL_SPLITS:
            if kind == "family":
                families = model_families(models)
                families_out = (_check_held_out(held_out_families, list(families), "family")
                                if held_out_families is not None
                                else _draw_families(families, test_size,
                                                    _rng(seed, _STREAM_MODELS)))
                held = [m for f in families_out for m in families[f]]
                if len(models) - len(held) < 2:
                    raise DataError(f"holding out {families_out} leaves fewer than two train "
                                    f"models", field="family")
            else:
                held = (_check_held_out(held_out_models, models, "model")
                        if held_out_models is not None
                        else _draw(models, test_size, _rng(seed, _STREAM_MODELS), "model"))
            test_models = [m for m in models if m in held]
            train_models = [m for m in models if m not in held]
        else:
            train_models = test_models = models
    train, validation = _grouped_stratified_cut(remaining, validation_size,
                                                _rng(seed, _STREAM_VALIDATION))
    if not train or not test:
        raise DataError(f"the {kind} split of {table.name!r} leaves an empty "
                        f"{'train' if not train else 'test'} part ({len(table)} queries)",
                        field="test_size")
    return Split(kind, int(seed), tuple(train), tuple(validation), tuple(test),
                 tuple(train_models), tuple(test_models), tuple(tasks_out),
                 tuple(families_out))


def validation_models(split: Split, share: float) -> list[str]:
    """A seeded ``share`` of a model or family split's train models (whole families for
    ``kind="family"``, at most ``share`` of them) that validation reads as new models: left
    out of fitting and onboarded from their aptitude answers, so that what validation chooses
    it chooses on models the router never trained on, as the test models are. Empty for
    ``share`` 0."""
    if not share:
        return []
    if split.kind not in MODEL_SPLITS:
        raise DataError(f"validation models are for the model and family splits, not "
                        f"{split.kind!r} (its test models are the train models)",
                        field="validation_model_share")
    share = _check_fraction(share, "validation_model_share")
    rng = _rng(split.seed, _STREAM_VALIDATION_MODELS)
    models = list(split.train_models)
    if split.kind == "family":
        families = model_families(models)
        if len(families) < 2:
            raise DataError(f"validation families need at least two train families, got "
                            f"{list(families)}", field="validation_model_share")
        drawn = _draw_families(families, share, rng, at_most=True)
        held = [m for m in models if model_family(m) in drawn]
    else:
        held = _draw(models, share, rng, "model")
    if len(held) < 2 or len(models) - len(held) < 2:
        raise DataError(f"validation_model_share {share} draws {len(held)} of the "
                        f"{len(models)} train models ({held}): validation routes among at least "
                        f"two, and at least two are fitted", field="validation_model_share")
    return held


def _draw_families(families: dict[str, list[str]], fraction: float,
                   rng: np.random.Generator, at_most: bool = False) -> list[str]:
    """Families in a seeded order until they hold at least ``fraction`` of the models, while
    leaving at least two models (and one family) to train on; ``at_most``: only families
    that keep the drawn models within ``fraction`` (a large family is passed over)."""
    names = list(families)
    if len(names) < 2:
        raise DataError(f"holding out families needs at least two, got {names}", field="family")
    total = sum(len(v) for v in families.values())
    target = max(1, round(fraction * total))
    picked, held = [], 0
    for i in rng.permutation(len(names)):
        if held >= target:
            break
        size = len(families[names[i]])
        if at_most and held + size > target:
            continue
        if total - held - size >= 2 and len(picked) < len(names) - 1:
            picked.append(names[i])
            held += size
    return [n for n in names if n in picked]


def sample_ids(ids: Sequence[str], limit: int, seed: int) -> list[str]:
    """A seeded sample of ``limit`` ids in their original order (all of them when ``limit`` is 0
    or at least their number)."""
    ids = list(ids)
    if not limit or limit >= len(ids):
        return ids
    keep = np.random.default_rng(seed).choice(len(ids), size=limit, replace=False)
    return [ids[i] for i in sorted(keep)]
