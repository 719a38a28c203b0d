"""``capsat explain``: the IRT side of a trained CapSAT router, as tables a person can read.

Writes per-model abilities and per-query difficulty / discrimination on a sample of test
queries, and checks the IRT reading: difficulty should fall as observed accuracy rises
(Spearman correlation, per task over its queries, and across tasks over their means).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from data_builders.sources import load_outcomes
from data_builders.splits import make_split, sample_ids

from .router import CapsatRouter


def _spearman(x, y) -> float | None:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def explain(router: str | CapsatRouter, data: str, *, split: str = "query", seed: int = 0,
            max_queries: int = 500, out_dir: str | os.PathLike | None = None) -> dict:
    if not isinstance(router, CapsatRouter):
        router = CapsatRouter.from_pretrained(router)
    table = load_outcomes(data)
    models = [m for m in router.models if m in table.models]
    table = table.subset(models=models).complete()
    test = table.subset(list(make_split(table, split, seed=seed).test))
    test = test.subset(sample_ids(test.query_ids, max_queries, seed))
    params = router.irt_parameters(test.texts)
    columns = [router.models.index(m) for m in models]
    ability = params["ability"][columns]
    abilities = pd.DataFrame(ability, index=models,
                             columns=[f"theta_{i}" for i in range(ability.shape[1])])
    abilities["ability_norm"] = np.linalg.norm(ability, axis=1)
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
        tmp = out / "explain.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, out / "explain.json")
    return report
