"""Compare routers on one data set and one split: the engine behind ``capsat eval``.

Every router is fitted on the train part, may choose hyper-parameters on the validation part
carved from train, and is scored once on test. Query embeddings are computed once (through
the disk cache) and shared by all routers. The reference values (best single model, oracle,
random) are computed from the labels directly; "best single" is the model with the best
*training* accuracy, evaluated on test, so no test label picks it; the "per-task best single"
sends each task to its best model on train. Metrics are the registry's (``metrics.METRICS``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from data_builders.atomic import write_json, write_text
from data_builders.embeddings import DEFAULT_ENCODER, Embedder
from data_builders.experiment import Experiment, prepare_experiment
from data_builders.outcomes import OutcomeTable
from data_builders.splits import MODEL_SPLITS

from ..routers import ROUTERS, Queries, get_router_class
from ..routers.provenance import refusal
from ..routers.registry import unknown_router
from . import metrics as M


@dataclass
class RouterSpec:
    """``NAME`` (fit a fresh router) or ``NAME:PATH`` (load a saved one, fitted elsewhere)."""

    name: str
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> "RouterSpec":
        name, _, path = text.strip().partition(":")
        if name not in ROUTERS:
            raise unknown_router(name)
        return cls(name, path or None)

    @property
    def label(self) -> str:
        return self.name if self.path is None else f"{self.name}:{Path(self.path).name}"


def parse_router_list(text: str | Sequence[str]) -> list[RouterSpec]:
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [i.strip() for i in items if i.strip()]
    if items == ["all"]:  # every router `capsat eval` fits itself
        items = sorted(name for name, entry in ROUTERS.items() if not entry.trained_with)
    if not items:
        raise ValueError("no routers given")
    specs = [RouterSpec.parse(i) for i in items]
    labels = [spec.label for spec in specs]
    if clash := sorted({label for label in labels if labels.count(label) > 1}):
        # Results are keyed by label: a second router would overwrite the first.
        raise ValueError(f"two routers would be reported as {', '.join(clash)}: "
                         f"{', '.join(i for i, label in zip(items, labels) if label in clash)} "
                         f"(a saved router is labelled NAME:FOLDER, its folder's name)")
    return specs


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
    #: Per test query (in ``query_ids`` order), for paired comparisons (``compare``): each
    #: router's and reference's realised score, and each router's query AUC (None: a query
    #: whose candidates were all right or all wrong).
    per_query: dict[str, dict] = field(default_factory=dict)
    query_ids: list[str] = field(default_factory=list)
    #: In memory only (not in the JSON): each router's (queries, candidates) probabilities
    #: and which pairs were right, for paired pooled-AUC comparisons (``compare``).
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    test_right: np.ndarray | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()
                if k not in ("probabilities", "test_right")}


def _embed_parts(parts: dict[str, OutcomeTable], encoder: str) -> dict[str, np.ndarray]:
    embedder = Embedder(encoder)
    return {name: embedder.encode(t.texts, desc=f"embedding {name} queries")
            for name, t in parts.items()}


def reference_values(experiment: Experiment, test: OutcomeTable) -> tuple[dict, list[str]]:
    """Best single model and per-task best single model, scored on test; the oracle, the
    task oracle (each task to its best model *on test*: the ceiling of any router that reads
    only the query's task, a bound to read routed accuracy against, never a router) and
    random. Returns (reference, notes).

    Known models (query and task splits) are picked on their train labels. Held-out models
    (model and family splits) are picked on their aptitude results alone, as a user onboarding
    them would: their other labels choose nothing."""
    models = list(experiment.split.test_models)
    if experiment.split.kind in MODEL_SPLITS:
        train = experiment.table.subset(sorted(experiment.aptitude.item_ids), models)
        chosen_on = "aptitude results"
    else:
        train = experiment.train_of_test_models()
        chosen_on = "train labels"
    scores = test.scores[models].to_numpy(dtype=float)
    best = str(train.scores.mean().idxmax())
    per_task_model, notes = {}, []
    train_tasks = train.queries["task"]
    for task in sorted(set(test.tasks)):
        rows = train_tasks.index[train_tasks == task]
        if len(rows):
            per_task_model[task] = str(train.scores.loc[rows].mean().idxmax())
        else:  # a task split: the held-out task has no train queries
            per_task_model[task] = best
            notes.append(f"task {task!r} has no train queries: its per-task best single is the "
                         f"best single model")
    picked = [test.scores.at[q, per_task_model[t]] for q, t in zip(test.query_ids, test.tasks)]
    on_test = {t: str(test.scores.loc[test.queries["task"] == t, models].mean().idxmax())
               for t in sorted(set(test.tasks))}
    task_oracle = float(np.mean([test.scores.at[q, on_test[t]]
                                 for q, t in zip(test.query_ids, test.tasks)]))
    reference_scores = {"best_single": test.scores[best].tolist(),
                        "per_task_best_single": [float(v) for v in picked]}
    reference = {"best_single": float(test.scores[best].mean()), "best_single_model": best,
                 "chosen_on": chosen_on, "per_task_best_single": float(np.mean(picked)),
                 "per_task_best_models": per_task_model,
                 "oracle": float(scores.max(axis=1).mean()), "task_oracle": task_oracle,
                 "random": float(scores.mean())}
    return reference, notes, reference_scores


def evaluate(data: str | OutcomeTable, split: str = "query", routers: str | Sequence[str] = "all",
             *, models: Sequence[str] | None = None, seed: int = 0, test_size: float = 0.2,
             validation_size: float = 0.1, held_out: Sequence[str] | None = None,
             out_dir: str | os.PathLike | None = None, plots: bool = True,
             encoder: str = DEFAULT_ENCODER, tasks: Sequence[str] | None = None,
             router_args: dict[str, dict] | None = None, load_options: dict | None = None,
             allow_unknown_provenance: bool = False, aptitude_items: int = 140) -> EvalResult:
    """Fit every router on train (or load a saved one), score it once on test.

    ``tasks``: evaluate on those tasks only (None = every task of the data). ``router_args``:
    per router name, config overrides. ``load_options``: the generic importer's options for a
    user's file. A saved router is refused when it saw any test query, or when it carries no
    record of what it was fitted on (unless ``allow_unknown_provenance``).

    ``aptitude_items``: size of the experiment's aptitude test (spread over the tasks). In a
    model or family split, only routers that onboard are scored: each is fitted on the train
    models and then onboards every held-out model from its results on those items alone.
    """
    specs = parse_router_list(routers)
    router_args = dict(router_args or {})
    stray = sorted(set(router_args) - {s.name for s in specs})
    if stray:
        raise KeyError(f"router options for {stray}, which this run does not evaluate")
    experiment = prepare_experiment(data, split, models=models, tasks=tasks, held_out=held_out,
                                    seed=seed, test_size=test_size,
                                    validation_size=validation_size, load_options=load_options,
                                    aptitude_items=aptitude_items)
    table, the_split = experiment.table, experiment.split
    train, validation, test = experiment.parts()
    test_models = list(the_split.test_models)
    reference, notes, reference_scores = reference_values(experiment, test)
    onboarding = split in MODEL_SPLITS
    result = EvalResult(table.name, {"kind": split, "seed": seed, **the_split.sizes(),
                                     "aptitude_items": len(experiment.aptitude.item_ids)},
                        test_models, table.cost_unit, reference,
                        notes=experiment.notes + notes, query_ids=test.query_ids)
    result.per_query.update({name: {"score": values}
                             for name, values in reference_scores.items()})
    if onboarding:
        result.split["held_out_models"] = test_models
        result.split["held_out_families"] = list(the_split.held_out_families)
        aptitude_results = experiment.aptitude_results(test_models)

    scores = test.scores[test_models].to_numpy(dtype=float)
    result.test_right = scores >= M.CORRECT_AT
    costs = None if test.costs is None else test.costs[test_models].to_numpy(dtype=float)
    expected_costs = None
    if costs is not None:  # per-model costs known before the call: train means
        expected_costs = experiment.train_of_test_models().costs.mean().to_numpy(dtype=float)
    for j, m in enumerate(test_models):
        result.single_models[m] = {"accuracy": float(scores[:, j].mean())}
        if costs is not None:
            result.single_models[m]["cost"] = float(costs[:, j].mean())

    embeddings = None
    if any(get_router_class(s.name).uses_embeddings for s in specs):
        embeddings = _embed_parts({"train": train, "validation": validation, "test": test},
                                  encoder)
    test_queries = Queries.from_table(test, None if embeddings is None else embeddings["test"])
    inputs = {"costs": costs, "expected_costs": expected_costs, "tasks": test.tasks,
              "reference": reference}

    for spec in specs:
        klass = get_router_class(spec.name)
        if klass.needs_responses and test.responses is None:
            result.skipped[spec.label] = "needs the candidates' responses; this data has none"
            continue
        if onboarding and not (klass.can_onboard or klass.cheats):
            result.skipped[spec.label] = ("cannot onboard held-out models from their aptitude "
                                          "test")
            continue
        options = router_args.get(spec.name, {})
        t0 = time.perf_counter()
        try:
            if spec.path:
                if options:
                    raise KeyError(f"{spec.label} is loaded, not fitted: its options cannot be "
                                   f"set here")
                router = klass.load(spec.path)
                why = refusal(router, test.query_ids, test.texts,
                              allow_unknown=allow_unknown_provenance,
                              what="these test queries")
                if why:
                    result.skipped[spec.label] = why
                    continue
            elif klass.cheats:
                router = klass(**options).fit(test)
            else:
                router = klass(**options).fit(train, validation, embeddings, split=split,
                                              seed=seed, aptitude=experiment.aptitude)
            if onboarding and not klass.cheats:
                scope = router.takes_aptitude(experiment.aptitude)
                if scope is None:
                    result.skipped[spec.label] = ("cannot take this split's aptitude test "
                                                  "(made on another split?): train it on this "
                                                  "split")
                    continue
                for model in test_models:
                    router.onboard(model, aptitude_results[model],
                                   replace=model in router.models, scope=scope)
            fit_seconds = time.perf_counter() - t0
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
        row = M.compute_metrics(probs, scores, **inputs)
        picks = M.chosen(probs)
        result.per_query[spec.label] = {
            "score": scores[np.arange(len(picks)), picks].tolist(),
            "query_auc": [None if np.isnan(v) else float(v)
                          for v in M.query_aucs(probs, scores)]}
        row["fit_seconds"] = round(fit_seconds, 3)
        row["predict_seconds"] = round(predict_seconds, 3)
        row["queries_per_second"] = round(len(test) / max(predict_seconds, 1e-9), 1)
        row["options"] = options
        state = router.state_json()
        row["chosen_hyperparameters"] = {k: v for k, v in state.items()
                                         if isinstance(v, (int, float, str, bool))}
        if costs is not None:
            result.curves[spec.label] = M.cost_curve(probs, scores, costs,
                                                     expected_costs).tolist()
        result.routers[spec.label] = row
        result.probabilities[spec.label] = probs

    if out_dir is not None:
        write_outputs(result, Path(out_dir), plots=plots)
    return result


# ----------------------------------------------------------------- output
def table_columns(result: EvalResult) -> list[tuple[str, str]]:
    """(metric, header) of every registered metric with a column that some router has."""
    return [(name, metric.column) for name, metric in M.METRICS.items()
            if metric.column and any(name in row for row in result.routers.values())]


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def format_table(result: EvalResult, markdown: bool = False) -> str:
    cols = table_columns(result)
    header = ["router"] + [short for _, short in cols]
    rows = [[name] + [_cell(row.get(key)) for key, _ in cols]
            for name, row in result.routers.items()]
    ref = result.reference
    foot = (f"best single = {ref['best_single']:.4f} ({ref['best_single_model']}), per-task "
            f"best single = {ref['per_task_best_single']:.4f} (both chosen on "
            f"{ref.get('chosen_on', 'train labels')}), oracle = {ref['oracle']:.4f}, "
            + (f"task oracle = {ref['task_oracle']:.4f} (each task to its best model on test: "
               f"a per-task router's ceiling), " if "task_oracle" in ref else "")
            + f"random = {ref['random']:.4f}; split {result.split}")
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
    write_json(out_dir / "results.json", result.to_json(), indent=2)
    write_text(out_dir / "results.md", format_table(result, markdown=True))
    if plots:
        from .plots import plot_cost_curves, plot_per_task

        plot_per_task(result, out_dir / "per_task_accuracy.png")
        if result.curves:
            plot_cost_curves(result, out_dir / "accuracy_vs_cost.png")
