"""One way to prepare an experiment: load the outcomes, restrict them to a pool of models (and
tasks), keep the queries every pool model has a score for, split, and choose the aptitude
test. ``capsat eval``, ``capsat train``, ``capsat explain``, ``capsat route`` (fitting a named
router) and ``python -m data_builders`` all call ``prepare_experiment``, so the same arguments
give the same table, split and aptitude test everywhere.

The aptitude test's core items are chosen on the train queries of the *train* models only:
in a model split, the held-out models' labels choose nothing (they are scored on the chosen
items afterwards, which is their onboarding).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from .aptitude import AptitudeTest, select_core_items
from .errors import DataError
from .outcomes import OutcomeTable
from .splits import Split, make_split


@dataclass
class Experiment:
    table: OutcomeTable  # the pool's complete queries (all parts)
    split: Split
    aptitude: AptitudeTest | None  # None unless asked for (k_per_task)
    notes: list[str] = field(default_factory=list)  # what was dropped or restricted, for reports

    def parts(self) -> tuple[OutcomeTable, OutcomeTable, OutcomeTable]:
        """(train, validation, test): train models on train / validation, test models on
        test."""
        return self.split.tables(self.table)

    def train_of_test_models(self) -> OutcomeTable:
        """The train queries with the test models' labels: what reference values (the best
        single model, its costs) are chosen on, never the test part."""
        return self.table.subset(list(self.split.train), list(self.split.test_models))

    def train_of_train_models(self) -> OutcomeTable:
        return self.table.subset(list(self.split.train), list(self.split.train_models))

    def aptitude_results(self, models: Sequence[str] | None = None) -> dict[str, dict]:
        """model -> {core item id: score}: the models' answers to the aptitude test (what a
        held-out model is onboarded from; its only labels any part of an experiment reads)."""
        if self.aptitude is None:
            raise DataError("this experiment has no aptitude test", field="aptitude")
        models = list(self.split.test_models if models is None else models)
        items = sorted(self.aptitude.item_ids)
        scores = self.table.subset(items, models).scores
        return {m: {q: float(v) for q, v in scores[m].items() if v == v} for m in models}


def restrict(table: OutcomeTable, models: Sequence[str] | None = None,
             tasks: Sequence[str] | None = None) -> tuple[OutcomeTable, list[str]]:
    """The pool (``models``), the ``tasks``, and only queries every pool model has a score
    for. Returns (table, notes)."""
    if models:
        table = table.subset(models=table.check_models(models))
    notes = []
    if tasks:
        known = set(table.tasks)
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise DataError(f"unknown task(s) {unknown}; {table.name!r} has {sorted(known)}",
                            field="task")
        table = table.subset(table.queries.index[table.queries["task"].isin(list(tasks))])
        notes.append(f"restricted to task(s) {list(tasks)}")
    complete = table.complete()
    if len(complete) < len(table):
        notes.append(f"dropped {len(table) - len(complete)} of {len(table)} queries that lack a "
                     f"score for some candidate model")
    if len(complete) == 0:
        raise DataError("no query has a score for every candidate model", field="score")
    return complete, notes


def load_table(data: str | os.PathLike | OutcomeTable, load_options: dict | None = None
               ) -> OutcomeTable:
    """A table as given, a shipped data set by name, or a user's file (``load_options`` are the
    generic importer's: layout, cost_unit, default_task)."""
    if isinstance(data, OutcomeTable):
        if load_options:
            raise DataError("load options apply to files, not to a loaded table",
                            field="load_options")
        return data
    from .sources import load_outcomes

    return load_outcomes(data, **(load_options or {}))


def prepare_experiment(data: str | os.PathLike | OutcomeTable, split: str = "query", *,
                       models: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                       held_out: Sequence[str] | None = None, seed: int = 0,
                       test_size: float = 0.2, validation_size: float = 0.1,
                       k_per_task: int | None = None, aptitude_items: int | None = None,
                       load_options: dict | None = None) -> Experiment:
    """Table, split and (with ``k_per_task``) aptitude test of one experiment.

    ``held_out``: the models (``split="model"``), families (``"family"``) or tasks
    (``"task"``) to hold out; default a seeded ``test_size`` share. ``tasks`` restricts the data to those tasks.
    """
    table, notes = restrict(load_table(data, load_options), models, tasks)
    held = {}
    if held_out:
        keys = {"model": "held_out_models", "family": "held_out_families",
                "task": "held_out_tasks"}
        if split not in keys:
            raise DataError(f"held_out is for split 'model', 'family' or 'task', not "
                            f"{split!r}", field="held_out")
        held = {keys[split]: list(held_out)}
    the_split = make_split(table, split, test_size=test_size, validation_size=validation_size,
                           seed=seed, **held)
    aptitude = None
    if aptitude_items is not None:
        if not isinstance(aptitude_items, int) or aptitude_items < 1:
            raise DataError(f"aptitude_items must be a positive integer, got {aptitude_items!r}",
                            field="aptitude_items")
        n_tasks = table.subset(list(the_split.train)).queries["task"].nunique()
        k_per_task = -(-aptitude_items // n_tasks)
    if k_per_task is not None:
        train = table.subset(list(the_split.train), list(the_split.train_models))
        aptitude = select_core_items(train, k_per_task, seed)
        aptitude.check_not_in(the_split.validation, "validation")
        aptitude.check_not_in(the_split.test, "test")
    return Experiment(table, the_split, aptitude, notes)
