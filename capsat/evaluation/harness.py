"""Compare routers on one data set and one split: the engine behind ``capsat eval``.

Every router is fitted on the train part, may choose hyper-parameters on the validation part
carved from train, and is scored once on test. Query embeddings are computed once (through
the disk cache) and shared by all routers. The reference values (best single model, oracle,
random) are computed from the labels directly; "best single" is the model with the best
*training* accuracy, evaluated on test, so no test label picks it.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from data_builders.embeddings import DEFAULT_ENCODER, Embedder
from data_builders.errors import DataError
from data_builders.outcomes import OutcomeTable
from data_builders.sources import load_outcomes
from data_builders.splits import Split, make_split

from ..routers import ROUTERS, Queries, Router, get_router_class
from . import metrics as M

PAIR_METRICS = ("routed_accuracy", "auc", "log_loss", "ece", "routed_cost")


@dataclass
class RouterSpec:
    """``NAME`` (fit a fresh router) or ``NAME:PATH`` (load a saved one, fitted elsewhere)."""

    name: str
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> "RouterSpec":
        name, _, path = text.strip().partition(":")
        if name not in ROUTERS:
            raise KeyError(f"unknown router {name!r}; known: {', '.join(sorted(ROUTERS))}")
        return cls(name, path or None)

    @property
    def label(self) -> str:
        return self.name if self.path is None else f"{self.name}:{Path(self.path).name}"


def parse_router_list(text: str | Sequence[str]) -> list[RouterSpec]:
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [i.strip() for i in items if i.strip()]
    if items == ["all"]:
        items = sorted(ROUTERS)
    if not items:
        raise ValueError("no routers given")
    return [RouterSpec.parse(i) for i in items]


@dataclass
class EvalResult:
    data: str
    split: dict
    models: list[str]
    cost_unit: str | None
    reference: dict
    routers: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    single_models: dict[str, dict] = field(default_factory=dict)
    curves: dict[str, list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _embed_parts(parts: dict[str, OutcomeTable], encoder: str) -> dict[str, np.ndarray]:
    embedder = Embedder(encoder)
    return {name: embedder.encode(t.texts, desc=f"embedding {name} queries")
            for name, t in parts.items()}


def prepare_table(data: str | OutcomeTable, *, models: Sequence[str] | None = None,
                  tasks: Sequence[str] | None = None) -> tuple[OutcomeTable, list[str]]:
    """The table ``evaluate`` splits: restricted to ``models`` and ``tasks`` (None = all), then
    to the queries every remaining model has a score for. Returns (table, notes)."""
    table = data if isinstance(data, OutcomeTable) else load_outcomes(data)
    if models:
        table = table.subset(models=table.check_models(models))
    if tasks:
        known = set(table.tasks)
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise DataError(f"unknown task(s) {unknown}; {table.name!r} has "
                            f"{sorted(known)}", field="task")
        table = table.subset(table.queries.index[table.queries["task"].isin(list(tasks))])
    complete = table.complete()
    notes = [f"restricted to task(s) {list(tasks)}"] if tasks else []
    if len(complete) < len(table):
        notes.append(f"dropped {len(table) - len(complete)} of {len(table)} queries that lack a "
                     f"score for some candidate model")
    if len(complete) == 0:
        raise DataError("no query has a score for every candidate model", field="score")
    return complete, notes


def evaluate(data: str | OutcomeTable, split: str = "query", routers: str | Sequence[str] = "all",
             *, models: Sequence[str] | None = None, seed: int = 0, test_size: float = 0.2,
             validation_size: float = 0.1, held_out: Sequence[str] | None = None,
             out_dir: str | os.PathLike | None = None, plots: bool = True,
             encoder: str = DEFAULT_ENCODER, tasks: Sequence[str] | None = None) -> EvalResult:
    """``tasks``: evaluate on those tasks only (None = every task of the data)."""
    specs = parse_router_list(routers)
    table, notes = prepare_table(data, models=models, tasks=tasks)

    held = {}
    if held_out:
        held = {"held_out_models" if split == "model" else "held_out_tasks": list(held_out)}
    the_split: Split = make_split(table, split, test_size=test_size,
                                  validation_size=validation_size, seed=seed, **held)
    train, validation, test = the_split.tables(table)
    test_models = list(the_split.test_models)

    scores = test.scores[test_models].to_numpy(dtype=float)
    costs = None if test.costs is None else test.costs[test_models].to_numpy(dtype=float)
    # Reference values. Best single: chosen on train labels (of the test models), scored on test.
    # Train labels / costs of the test models: pick the best single model and the expected
    # per-model costs without looking at test.
    train_of_test_models = table.subset(list(the_split.train), test_models)
    train_means = train_of_test_models.scores.mean()
    best_model = str(train_means.idxmax())
    best_single = float(test.scores[best_model].mean())
    oracle = float(scores.max(axis=1).mean())
    reference = {"best_single": best_single, "best_single_model": best_model,
                 "oracle": oracle, "random": float(scores.mean())}
    result = EvalResult(table.name, {"kind": split, "seed": seed, **the_split.sizes()},
                        test_models, table.cost_unit, reference, notes=notes)

    expected_costs = None
    if costs is not None:
        expected_costs = train_of_test_models.costs.mean()
        expected_costs = expected_costs.to_numpy(dtype=float)
        for j, m in enumerate(test_models):
            result.single_models[m] = {"accuracy": float(scores[:, j].mean()),
                                       "cost": float(costs[:, j].mean())}
    else:
        for j, m in enumerate(test_models):
            result.single_models[m] = {"accuracy": float(scores[:, j].mean())}

    embeddings = None
    if any(get_router_class(s.name).uses_embeddings for s in specs):
        embeddings = _embed_parts({"train": train, "validation": validation, "test": test},
                                  encoder)
    test_queries = Queries.from_table(test, None if embeddings is None else embeddings["test"])

    for spec in specs:
        klass = get_router_class(spec.name)
        if klass.needs_responses and test.responses is None:
            result.skipped[spec.label] = "needs the candidates' responses; this data has none"
            continue
        t0 = time.perf_counter()
        try:
            if spec.path:
                router = klass.load(spec.path)
            elif klass.cheats:
                router = klass().fit(test)
            else:
                router = klass().fit(train, validation, embeddings)
            fit_seconds = time.perf_counter() - t0
            seen = getattr(router, "seen_query_ids", set()) & set(test.query_ids)
            if seen:
                result.skipped[spec.label] = (f"was trained on {len(seen)} of these test queries "
                                              f"(e.g. {sorted(seen)[:3]}): evaluate it on the "
                                              f"split it was trained for")
                continue
            unseen = [m for m in test_models if m not in router.models]
            if unseen:
                result.skipped[spec.label] = (f"cannot score models it was not fitted on: "
                                              f"{unseen}")
                continue
            t1 = time.perf_counter()
            probs = router.predict_proba(test_queries, test_models)
            predict_seconds = time.perf_counter() - t1
        except NotImplementedError as err:
            result.skipped[spec.label] = str(err)
            continue
        row = {name: M.METRICS[name].fn(probs, scores, costs=costs) for name in PAIR_METRICS}
        row["gap_closed"] = M.gap_closed(row["routed_accuracy"], best_single, oracle)
        row["per_task"] = M.per_task_accuracy(probs, scores, test.tasks)
        row["fit_seconds"] = round(fit_seconds, 3)
        row["predict_seconds"] = round(predict_seconds, 3)
        row["queries_per_second"] = round(len(test) / max(predict_seconds, 1e-9), 1)
        state = router.state_json()
        row["chosen_hyperparameters"] = {k: v for k, v in state.items()
                                         if isinstance(v, (int, float, str, bool))}
        if costs is not None:
            curve = M.cost_curve(probs, scores, costs, expected_costs)
            single_costs = costs.mean(axis=0)
            row["cost_curve_area"] = M.cost_curve_area(curve, single_costs.min(),
                                                       single_costs.max())
            row["cost_to_reach_best_single"] = M.cost_to_reach(curve, best_single)
            result.curves[spec.label] = curve.tolist()
        result.routers[spec.label] = {k: (None if isinstance(v, float) and np.isnan(v) else v)
                                      for k, v in row.items()}

    if out_dir is not None:
        write_outputs(result, Path(out_dir), plots=plots)
    return result


# ----------------------------------------------------------------- output
TABLE_COLUMNS = [("routed_accuracy", "acc"), ("gap_closed", "gap"), ("auc", "AUC"),
                 ("log_loss", "logloss"), ("ece", "ECE")]


def format_table(result: EvalResult, markdown: bool = False) -> str:
    cols = list(TABLE_COLUMNS)
    if result.cost_unit:
        cols += [("routed_cost", "cost"), ("cost_to_reach_best_single", "cost@best")]
    header = ["router"] + [short for _, short in cols]
    rows = []
    for name, row in result.routers.items():
        cells = [name]
        for key, _ in cols:
            v = row.get(key)
            cells.append("-" if v is None else (f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"))
        rows.append(cells)
    ref = result.reference
    foot = (f"best single = {ref['best_single']:.4f} ({ref['best_single_model']}), "
            f"oracle = {ref['oracle']:.4f}, random = {ref['random']:.4f}; "
            f"split {result.split}")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n\n" + foot + "\n"
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*r) for r in rows]
    out = "\n".join(lines) + "\n" + foot
    for name, why in result.skipped.items():
        out += f"\nskipped {name}: {why}"
    for note in result.notes:
        out += f"\nnote: {note}"
    return out


def write_outputs(result: EvalResult, out_dir: Path, plots: bool = True) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(result.to_json(), indent=2))
    os.replace(tmp, out_dir / "results.json")
    (out_dir / "results.md").write_text(format_table(result, markdown=True))
    if plots:
        from .plots import plot_cost_curves, plot_per_task

        plot_per_task(result, out_dir / "per_task_accuracy.png")
        if result.curves:
            plot_cost_curves(result, out_dir / "accuracy_vs_cost.png")
