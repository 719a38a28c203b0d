"""The Model-SAT aptitude test: a few core items per task that a new model answers to be
onboarded (``AptitudeItem``: its text, options, reference answer and grading rule), and its
scores on them (``score_models``, ``check_item_results``). Core items are chosen from the
train part of a split, and must never be used for evaluation: ``AptitudeTest.item_ids``,
``check_not_in`` and ``exclude_core_items`` keep them out.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from .errors import DataError
from .jsonl import iter_jsonl
from .outcomes import OutcomeTable


class MissingAptitudeScore(UserWarning):
    """A model has no score on any core item of a task, so its accuracy there is unknown."""


@dataclass(frozen=True)
class AptitudeTest:
    """Core items per task (query ids, in selection order), chosen with ``k_per_task`` and
    ``seed``; a task with fewer train items than ``k_per_task`` keeps all it has."""

    items: dict[str, tuple[str, ...]]
    k_per_task: int
    seed: int

    def __post_init__(self):
        object.__setattr__(self, "items", {str(t): tuple(str(q) for q in ids)
                                           for t, ids in sorted(self.items.items())})
        if not self.items:
            raise DataError("an aptitude test needs at least one task", field="items")
        empty = [t for t, ids in self.items.items() if not ids]
        if empty:
            raise DataError(f"task(s) {empty} have no core items", field="items")
        ids = [q for qs in self.items.values() for q in qs]
        if len(set(ids)) != len(ids):
            raise DataError("a core item is listed twice", field="items")

    @property
    def tasks(self) -> list[str]:
        return list(self.items)

    @property
    def item_ids(self) -> frozenset[str]:
        return frozenset(q for ids in self.items.values() for q in ids)

    def task_of(self) -> dict[str, str]:
        """query id -> task, for every core item."""
        return {q: t for t, ids in self.items.items() for q in ids}

    def check_not_in(self, query_ids: Iterable[str], part: str = "evaluation") -> None:
        """Raise DataError if any core item is among ``query_ids`` (e.g. a split's test)."""
        leaked = sorted(self.item_ids.intersection(query_ids))
        if leaked:
            raise DataError(f"{len(leaked)} aptitude-test core item(s) are in the {part} data, "
                            f"e.g. {leaked[:3]}; core items must never be evaluated on",
                            field="query_id")

    # ---------------------------------------------------------------- JSON
    def to_json(self) -> dict:
        return {"k_per_task": self.k_per_task, "seed": self.seed,
                "items": {t: list(ids) for t, ids in self.items.items()}}

    @classmethod
    def from_json(cls, d: dict, *, file: str | None = None) -> "AptitudeTest":
        if not isinstance(d, dict):
            raise DataError(f"an aptitude test must be a JSON object, got {type(d).__name__}",
                            file=file)
        for name in ("k_per_task", "seed", "items"):
            if name not in d:
                raise DataError("missing from the saved aptitude test", file=file, field=name)
        for name in ("k_per_task", "seed"):
            if not isinstance(d[name], int) or isinstance(d[name], bool):
                raise DataError(f"must be an integer, got {d[name]!r}", file=file, field=name)
        items = d["items"]
        if not isinstance(items, dict) or not all(
                isinstance(ids, list) and all(isinstance(q, str) for q in ids)
                for ids in items.values()):
            raise DataError("must map each task to a list of query ids", file=file,
                            field="items")
        return cls(items, d["k_per_task"], d["seed"])


# --------------------------------------------------------------------- selection
def _item_discrimination(scores: pd.DataFrame) -> pd.Series:
    """Covariance, across models, of each item's score (rows of ``scores``, items x models)
    with the model's accuracy on the *other* items (the corrected item-total covariance).

    It is std(item) * std(ability) * corr(item, ability): high for items whose score varies
    across models, and varies the way their ability does. Missing scores are left out.
    """
    observed = scores.notna().to_numpy()
    item = scores.to_numpy(dtype=float)
    own = np.where(observed, item, 0.0)
    total, count = own.sum(axis=0), observed.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ability = (total[None, :] - own) / (count[None, :] - observed)
    mask = observed & np.isfinite(ability)
    n = mask.sum(axis=1)
    item_mean = np.where(mask, item, 0.0).sum(axis=1) / np.maximum(n, 1)
    ability_mean = np.where(mask, ability, 0.0).sum(axis=1) / np.maximum(n, 1)
    cov = np.where(mask, (item - item_mean[:, None]) * (ability - ability_mean[:, None]),
                   0.0).sum(axis=1) / np.maximum(n - 1, 1)
    cov[n < 2] = np.nan
    return pd.Series(cov, index=scores.index)


def _pick_task_items(scores: pd.DataFrame, tie_break: pd.Series, k: int) -> list[str]:
    """k items of one task (``scores``: items x train models).

    Why this rule: we want items that separate models, but k items that all sit at the same
    (median) difficulty give every model about 0% or 100%, a one-bit description. So the items
    every model answered and that not all models got equally right are sorted by difficulty
    (mean score across models) and cut into k equal bands, and from each band the item with
    the highest corrected item-total covariance (``_item_discrimination``) is taken: each item
    separates models, at k different ability levels, so the core-item accuracy ranks the
    models finely. On MMLU-Pro (query split, seed 0, k=10) the core-item accuracy of the 29
    models correlates 0.94 with their accuracy on the test part (top-k covariance: 0.90,
    random items: 0.71), and the chosen items' variance across models is above the task's
    average in every task. Too few such items: the rest are filled in by (complete,
    discrimination) order.
    """
    discrimination = _item_discrimination(scores)
    complete = scores.notna().all(axis=1)
    spread = complete & (scores.var(axis=1) > 0)
    candidates = pd.DataFrame({"difficulty": scores[spread].mean(axis=1),
                               "discrimination": discrimination[spread],
                               "tie_break": tie_break.loc[scores.index[spread]]})
    picked: list[str] = []
    if len(candidates) >= k:
        by_difficulty = candidates.sort_values(["difficulty", "tie_break"], kind="mergesort")
        for band in np.array_split(np.arange(len(by_difficulty)), k):
            rows = by_difficulty.iloc[band].sort_values(
                ["discrimination", "tie_break"], ascending=[False, True], kind="mergesort")
            picked.append(rows.index[0])
        return picked
    fallback = pd.DataFrame({"complete": complete.astype(int),
                             "discrimination": discrimination.fillna(-np.inf),
                             "tie_break": tie_break.loc[scores.index]})
    fallback = fallback.sort_values(["complete", "discrimination", "tie_break"],
                                    ascending=[False, False, True], kind="mergesort")
    return list(fallback.index[:k])


def select_core_items(train: OutcomeTable, k_per_task: int, seed: int) -> AptitudeTest:
    """Pick ``k_per_task`` core items per task from ``train`` (the train part of a split):
    discriminating items spread over difficulty (see ``_pick_task_items``); ties are broken
    by a seeded random order. A task with fewer items keeps all of them."""
    if not isinstance(k_per_task, int) or isinstance(k_per_task, bool) or k_per_task < 1:
        raise DataError(f"k_per_task must be a positive integer, got {k_per_task!r}",
                        field="k_per_task")
    if len(train.models) < 2:
        raise DataError("choosing discriminating items needs at least two models",
                        field="model")
    rng = np.random.default_rng(int(seed))
    tie_break = pd.Series(rng.permutation(len(train)), index=train.queries.index)
    items = {}
    for task in sorted(train.queries["task"].unique()):
        ids = train.queries.index[train.queries["task"] == task]
        items[task] = tuple(_pick_task_items(train.scores.loc[ids], tie_break, k_per_task))
    return AptitudeTest(items, k_per_task, int(seed))


def exclude_core_items(table: OutcomeTable, test: AptitudeTest) -> OutcomeTable:
    """``table`` without the core items: what evaluation data is built from."""
    keep = ~table.queries.index.isin(list(test.item_ids))
    return table.subset(table.queries.index[keep])


# ------------------------------------------------------------------------ scoring
def _check_items_known(test: AptitudeTest, table: OutcomeTable) -> None:
    missing = sorted(test.item_ids.difference(table.queries.index))
    if missing:
        raise DataError(f"{len(missing)} core item(s) are not in {table.name!r}, e.g. "
                        f"{missing[:3]}", field="query_id")


def score_models(test: AptitudeTest, table: OutcomeTable,
                 models: Iterable[str] | None = None) -> pd.DataFrame:
    """Model x task accuracy on the core items (missing scores are left out).

    A model with no score on any core item of a task gets NaN there and a
    ``MissingAptitudeScore`` warning: scoring stays possible (e.g. to inspect a partial
    onboarding).
    """
    _check_items_known(test, table)
    models = table.models if models is None else table.check_models(models)
    rows = {}
    for task, ids in test.items.items():
        rows[task] = table.scores.loc[list(ids), models].mean(axis=0, skipna=True)
    accuracy = pd.DataFrame(rows).reindex(index=models, columns=test.tasks)
    accuracy.index.name, accuracy.columns.name = "model", "task"
    missing = [(m, t) for m in models for t in test.tasks if math.isnan(accuracy.at[m, t])]
    if missing:
        warnings.warn(f"{len(missing)} (model, task) pair(s) have no score on any core item, "
                      f"their accuracy is NaN: {missing[:5]}", MissingAptitudeScore,
                      stacklevel=2)
    return accuracy


# ----------------------------------------------------------------- items to take
#: Option letters of a multiple-choice item: "A) ..." lines of its text.
OPTION_LINE = re.compile(r"^([A-Z])\) ", re.MULTILINE)
#: How a reply is graded: the option letter read from it equals the answer; the reply itself
#: (trimmed, case-folded) equals it; or not at all (the source has no reference answer).
GRADINGS = ("multiple_choice", "exact_match", "none")
ITEM_FIELDS = ("id", "task", "question", "choices", "answer", "grading")


def option_letters(question: str) -> tuple[str, ...]:
    """The option letters of a question text: its last run of "A) ", "B) ", ... lines (the
    question's own lines may start "A) " too: MMLU-Pro has multi-part questions)."""
    letters = OPTION_LINE.findall(question)
    if "A" in letters:
        letters = letters[len(letters) - 1 - letters[::-1].index("A"):]
    return tuple(dict.fromkeys(letters))


@dataclass(frozen=True)
class AptitudeItem:
    """One core item of the aptitude test, as a new model takes it."""

    id: str
    task: str
    question: str  # the full text the candidates saw (options included)
    choices: tuple[str, ...] | None  # option letters of a multiple-choice item
    answer: str | None  # the reference answer (None: grading "none")
    grading: str

    @classmethod
    def of(cls, item_id: str, task: str, question: str, answer: str | None) -> "AptitudeItem":
        """From a question text: its "A) ..." option lines make it multiple choice when the
        answer is one of them; no answer, no grading."""
        letters = option_letters(question)
        if answer is None:
            return cls(item_id, task, question, letters or None, None, "none")
        grading = "multiple_choice" if answer in letters else "exact_match"
        return cls(item_id, task, question, letters or None, answer, grading)

    @property
    def gradable(self) -> bool:
        return self.grading != "none"

    def to_json(self) -> dict:
        return {"id": self.id, "task": self.task, "question": self.question,
                "choices": None if self.choices is None else list(self.choices),
                "answer": self.answer, "grading": self.grading}

    @classmethod
    def from_json(cls, record, *, file: str | None = None, line: int | None = None
                  ) -> "AptitudeItem":
        """One checked record; errors name the file, the line and the field."""
        def error(message: str, field: str | None = None) -> DataError:
            return DataError(message, file=file, line=line, field=field)

        if not isinstance(record, dict):
            raise error("expected a JSON object")
        for name in ITEM_FIELDS:
            if name not in record:
                raise error("missing field", name)
        unknown = sorted(set(record) - set(ITEM_FIELDS))
        if unknown:
            raise error(f"unknown field(s) {unknown}; known: {list(ITEM_FIELDS)}", unknown[0])
        if record["grading"] not in GRADINGS:
            raise error(f"unknown grading {record['grading']!r}; known: {list(GRADINGS)}",
                        "grading")
        for name in ("id", "task", "question") + (("answer",) if record["grading"] != "none"
                                                  else ()):
            if not isinstance(record[name], str) or not record[name].strip():
                raise error("must be a non-empty string", name)
        choices = record["choices"]
        if choices is not None and (not isinstance(choices, list) or not choices or not all(
                isinstance(c, str) and c for c in choices) or len(set(choices)) != len(choices)):
            raise error("must be null or a list of distinct non-empty strings", "choices")
        if record["grading"] == "multiple_choice":
            if choices is None or not all(re.fullmatch(r"[A-Z]", c) for c in choices):
                raise error('multiple_choice needs the option letters, e.g. ["A", "B"]',
                            "choices")
            if record["answer"] not in choices:
                raise error(f"answer {record['answer']!r} is not one of the choices {choices}",
                            "answer")
        return cls(record["id"], record["task"], record["question"],
                   None if choices is None else tuple(choices), record["answer"],
                   record["grading"])


def aptitude_items(table: OutcomeTable, test: AptitudeTest) -> list[AptitudeItem]:
    """The core items as a new model takes them: text, options, reference answer (the table's
    ``answer`` column where it has one)."""
    _check_items_known(test, table)
    answers = table.queries["answer"] if "answer" in table.queries else None
    out = []
    for task in test.tasks:
        for q in test.items[task]:
            answer = None if answers is None or answers.isna()[q] else str(answers[q])
            out.append(AptitudeItem.of(q, task, table.queries.at[q, "query"], answer))
    return out


def read_aptitude_items(path: str | os.PathLike) -> list[AptitudeItem]:
    """Every item of a JSONL items file, checked; an id twice is an error."""
    path = str(path)
    items, seen = [], {}
    for line_no, record in iter_jsonl(path):
        item = AptitudeItem.from_json(record, file=path, line=line_no)
        if item.id in seen:
            raise DataError(f"item {item.id!r} is also on line {seen[item.id]}", file=path,
                            line=line_no, field="id")
        seen[item.id] = line_no
        items.append(item)
    if not items:
        raise DataError("no items", file=path)
    return items


def check_item_results(test: AptitudeTest | None, results: Mapping[str, float]
                       ) -> dict[str, float]:
    """A new model's aptitude results, checked against the test: item id -> score in [0, 1],
    every key a core item and every task answered at least once."""
    if test is None:
        raise DataError("this router has no aptitude test to onboard from", field="aptitude")
    if not isinstance(results, Mapping) or not results:
        raise DataError("aptitude results must map core item ids to scores", field="results")
    task_of = test.task_of()
    stray = sorted(set(results) - set(task_of))
    if stray:
        raise DataError(f"{len(stray)} result(s) are not on the aptitude test's core items, "
                        f"e.g. {stray[:3]}", field="results")
    out = {}
    for item, value in results.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not 0.0 <= float(value) <= 1.0:
            raise DataError(f"score of {item!r} must be a number in [0, 1], got {value!r}",
                            field="score")
        out[str(item)] = float(value)
    missing = sorted(set(test.tasks) - {task_of[q] for q in out})
    if missing:
        raise DataError(f"no core-item result for task(s) {missing}", field="task")
    return out
