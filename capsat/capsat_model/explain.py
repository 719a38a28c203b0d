"""``capsat explain``: the IRT side of a trained CapSAT router, as tables a person can read.

Writes per-model abilities (the encoder's, read from each candidate's evidence, and the one
fitted on that evidence with the item side frozen, as onboarding does) and per-query
difficulty / discrimination on a sample of test queries, and checks the IRT reading: ability
should rise with observed accuracy across models, and difficulty should fall as observed
accuracy rises (Spearman correlation, per task over its queries, and across tasks).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from data_builders.atomic import write_json
from data_builders.errors import DataError
from data_builders.experiment import load_table, prepare_experiment
from data_builders.splits import sample_ids

from ..routers.provenance import refusal
from .router import CapsatRouter


def _spearman(x, y) -> float | None:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def explain(router: str | CapsatRouter, data: str, *, split: str = "query", seed: int = 0,
            max_queries: int = 500, out_dir: str | os.PathLike | None = None,
            allow_unknown_provenance: bool = False) -> dict:
    """Explain on a seeded sample of the test part of ``split``; refuses a router that saw
    any of those queries, or that keeps no record of its training data (unless
    ``allow_unknown_provenance``)."""
    if not isinstance(router, CapsatRouter):
        router = CapsatRouter.from_pretrained(router)
    table = load_table(data)
    models = [m for m in router.models if m in table.models]
    if len(models) < 2:
        raise DataError(f"{table.name!r} has scores for {len(models)} of the router's "
                        f"candidates; explaining needs at least two", field="model")
    experiment = prepare_experiment(table, split, models=models, seed=seed)
    test = experiment.table.subset(list(experiment.split.test))
    test = test.subset(sample_ids(test.query_ids, max_queries, seed))
    why = refusal(router, test.query_ids, test.texts, allow_unknown=allow_unknown_provenance,
                  what="the queries to explain")
    if why:
        raise DataError(f"the router {why}", field="router")
    params = router.irt_parameters(test.texts)
    columns = [router.models.index(m) for m in models]
    ability = params["ability"][columns]
    abilities = pd.DataFrame(ability, index=models,
                             columns=[f"theta_{i}" for i in range(ability.shape[1])])
    abilities["ability_norm"] = np.linalg.norm(ability, axis=1)
    # A scalar reading of each ability: its projection on the mean discrimination of these
    # queries (what a_q . theta is on an average query).
    mean_discrimination = params["discrimination"].mean(axis=0)
    abilities["ability_score"] = ability @ mean_discrimination
    # Onboarding's own estimate: the ability that best explains the candidate's evidence with
    # the item side frozen (for trained models, their whole bank).
    fitted = np.stack([router.fit_ability(router.evidence_results(m)) for m in models])
    fitted = fitted - fitted.mean(axis=0, keepdims=True)  # centred, as the encoder's
    abilities["fitted_ability_score"] = fitted @ mean_discrimination
    abilities["kind"] = [router.candidates[m].kind for m in models]
    abilities["observed_accuracy"] = test.scores[models].mean().to_numpy()
    queries = pd.DataFrame({"task": test.tasks, "difficulty": params["difficulty"],
                            "discrimination_norm": np.linalg.norm(params["discrimination"],
                                                                  axis=1),
                            "observed_accuracy": test.scores[models].mean(axis=1).to_numpy()},
                           index=pd.Index(test.query_ids, name="query_id"))
    per_task = {task: _spearman(part["difficulty"], part["observed_accuracy"])
                for task, part in queries.groupby("task")}
    means = queries.groupby("task")[["difficulty", "observed_accuracy"]].mean()
    across = _spearman(means["difficulty"], means["observed_accuracy"])
    overall = _spearman(queries["difficulty"], queries["observed_accuracy"])
    summary = {"queries": len(queries), "models": len(models),
               "spearman_ability_vs_accuracy_across_models": _spearman(
                   abilities["ability_score"], abilities["observed_accuracy"]),
               "spearman_fitted_ability_vs_accuracy_across_models": _spearman(
                   abilities["fitted_ability_score"], abilities["observed_accuracy"]),
               "spearman_difficulty_vs_accuracy_over_queries": overall,
               "spearman_difficulty_vs_accuracy_across_tasks": across,
               "spearman_difficulty_vs_accuracy_per_task": per_task,
               "difficulty_falls_as_accuracy_rises": bool(overall is not None and overall < 0)}
    report = {"summary": summary, "abilities": abilities, "queries": queries}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        abilities.to_csv(out / "abilities.csv", index_label="model")
        queries.to_csv(out / "queries.csv")
        write_json(out / "explain.json", summary, indent=2)
    return report
