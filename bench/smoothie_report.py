"""SMOOTHIE on RouterBench: routed accuracy beside the references and supervised routers, whether
GLOBAL picks the best model per task, and how its scores rank the candidates.

    python bench/smoothie_report.py --run   # the four `capsat eval` runs, then the report
    python bench/smoothie_report.py         # the report from existing runs/smoothie_*

The runs are exactly these commands (query split, 20% test, 10% validation, seed 0):

    capsat eval --data routerbench --split query \\
        --routers random,best_single,oracle,knn,irt,smoothie_global,smoothie_local \\
        --out runs/smoothie_routerbench [--tasks TASK --out runs/smoothie_TASK]

For the rank statistics, each run's test split is rebuilt with the harness's own
``prepare_experiment`` (checked against the run's recorded split sizes and
per-model test accuracies), SMOOTHIE is fitted and scored again on it (deterministic), and per
task the Spearman correlation between its per-model scores and the models' true test accuracy
is computed. Writes bench/results/smoothie.json and bench/results/smoothie.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from capsat.cli import main as cli_main
from capsat.routers import Queries, make_router
from data_builders.atomic import write_text
from data_builders.embeddings import Embedder
from data_builders.experiment import prepare_experiment

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ROUTERS = "random,best_single,oracle,knn,irt,smoothie_global,smoothie_local"
TASKS = ("arc-challenge", "mbpp", "winogrande")
#: run name -> tasks it is restricted to (None: all three, mixed)
RUNS = {"routerbench": None, **{task: [task] for task in TASKS}}
TEST_SIZE, VALIDATION_SIZE = 0.2, 0.1
TABLE_ROUTERS = ("random", "best_single", "knn", "irt", "smoothie_global", "smoothie_local",
                 "oracle")


def run_dir(name: str) -> Path:
    return ROOT / "runs" / f"smoothie_{name}"


def command(name: str) -> list[str]:
    args = ["eval", "--data", "routerbench", "--split", "query", "--routers", ROUTERS,
            "--out", str(run_dir(name).relative_to(ROOT))]
    return args + (["--tasks", ",".join(RUNS[name])] if RUNS[name] else [])


def rank_statistics(name: str, recorded: dict) -> dict:
    """Per task of the run's test split: SMOOTHIE's per-model scores against true accuracy."""
    experiment = prepare_experiment("routerbench", recorded["split"]["kind"], tasks=RUNS[name],
                                    test_size=TEST_SIZE, validation_size=VALIDATION_SIZE,
                                    seed=recorded["split"]["seed"])
    table, split = experiment.table, experiment.split
    for key, value in split.sizes().items():
        if recorded["split"][key] != value:
            raise RuntimeError(f"{name}: rebuilt split differs from the run's ({key}: "
                               f"{value} vs {recorded['split'][key]})")
    train, validation, test = split.tables(table)
    for model, row in recorded["single_models"].items():
        if not np.isclose(test.scores[model].mean(), row["accuracy"], atol=1e-12):
            raise RuntimeError(f"{name}: rebuilt test accuracy of {model} differs from the run's")
    embeddings = Embedder().encode(test.texts, desc="test queries")
    queries = Queries.from_table(test, embeddings)
    scores = {}
    for router_name in ("smoothie_global", "smoothie_local"):
        router = make_router(router_name).fit(train, validation)
        scores[router_name] = router.predict_proba(queries)
    models = test.models
    tasks = np.array(test.tasks)
    train_means = train.scores.groupby(np.array(train.tasks)).mean()
    out = {}
    for task in sorted(set(tasks.tolist())):
        rows = tasks == task
        accuracy = test.scores[rows.tolist()].mean().to_numpy()
        best = [models[j] for j in np.flatnonzero(accuracy == accuracy.max())]
        glob = scores["smoothie_global"][rows][0]
        local_mean = scores["smoothie_local"][rows].mean(axis=0)
        picked = models[int(np.argmax(glob))]
        out[task] = {
            "test_queries": int(rows.sum()),
            "true_test_accuracy": dict(zip(models, accuracy.round(4).tolist())),
            "smoothie_global_score": dict(zip(models, glob.round(5).tolist())),
            "smoothie_global_pick": picked,
            "smoothie_global_pick_test_accuracy": float(accuracy[models.index(picked)]),
            "best_model_on_test": best,
            "best_model_on_train": str(train_means.loc[task].idxmax()),
            "global_picks_best_on_test": picked in best,
            "global_picks_best_on_train": picked == str(train_means.loc[task].idxmax()),
            "global_pick_rank_by_test_accuracy": int((accuracy > accuracy[models.index(picked)])
                                                     .sum() + 1),
            "spearman_global_vs_accuracy": float(spearmanr(glob, accuracy).statistic),
            "spearman_local_mean_vs_accuracy": float(spearmanr(local_mean, accuracy).statistic),
        }
    return out


def markdown(report: dict) -> str:
    lines = ["# SMOOTHIE (label-free) on RouterBench\n",
             "Produced by `python bench/smoothie_report.py --run` (query split, 20% test, 10% "
             "validation, seed 0; SMOOTHIE transductive: test queries scored from their own "
             "candidates' outputs, no label read). Routed accuracy on the test split; GLOBAL "
             "estimates per task.\n",
             "## Routed accuracy\n",
             "| run | test queries | " + " | ".join(TABLE_ROUTERS) + " |",
             "|---|---|" + "---|" * len(TABLE_ROUTERS)]
    for name, run in report["runs"].items():
        cells = []
        for router in TABLE_ROUTERS:
            row = run["routers"].get(router)
            cells.append("-" if row is None else f"{row['routed_accuracy']:.4f}")
        lines.append(f"| {name} | {run['test_queries']} | " + " | ".join(cells) + " |")
    lines += ["", "best_single = the model with the best training accuracy; oracle = best "
              "possible pick per query. AUC (rank-based) of the SMOOTHIE scores:", ""]
    lines += ["| run | " + " | ".join(TABLE_ROUTERS) + " |", "|---|" + "---|" * len(TABLE_ROUTERS)]
    for name, run in report["runs"].items():
        cells = []
        for router in TABLE_ROUTERS:
            row = run["routers"].get(router)
            auc = None if row is None else row.get("auc")
            cells.append("-" if auc is None else f"{auc:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Per task: does GLOBAL pick the best model, and does it rank them?\n",
              "| run | task | GLOBAL pick (test acc, rank) | best on test | best on train | "
              "Spearman GLOBAL | Spearman LOCAL (mean) |", "|---|---|---|---|---|---|---|"]
    for name, run in report["runs"].items():
        for task, row in run["per_task"].items():
            lines.append(
                f"| {name} | {task} | {row['smoothie_global_pick']} "
                f"({row['smoothie_global_pick_test_accuracy']:.3f}, "
                f"#{row['global_pick_rank_by_test_accuracy']}) | "
                f"{', '.join(row['best_model_on_test'])} | {row['best_model_on_train']} | "
                f"{row['spearman_global_vs_accuracy']:.3f} | "
                f"{row['spearman_local_mean_vs_accuracy']:.3f} |")
    lines += ["", "Spearman: over the 11 models, SMOOTHIE's per-model score (LOCAL: its mean "
              "over the task's test queries) against the model's true test accuracy on the task.",
              "SMOOTHIE's scores are quality scores mapped to [0, 1], not probabilities: its "
              "log-loss and ECE in runs/*/results.json are not meaningful.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true",
                        help="(re)run the four capsat eval runs before reporting")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    report = {"commands": {}, "runs": {}}
    for name in RUNS:
        report["commands"][name] = "capsat " + " ".join(command(name))
        if args.run:
            print(f"$ {report['commands'][name]}", flush=True)
            if cli_main(command(name)) != 0:
                return 1
        path = run_dir(name) / "results.json"
        if not path.exists():
            print(f"missing {path}: run with --run", file=sys.stderr)
            return 1
        recorded = json.loads(path.read_text())
        report["runs"][name] = {
            "test_queries": recorded["split"]["test_queries"],
            "reference": recorded["reference"],
            "routers": {router: {k: row.get(k) for k in ("routed_accuracy", "gap_closed", "auc",
                                                         "routed_cost", "per_task")}
                        for router, row in recorded["routers"].items()},
            "per_task": rank_statistics(name, recorded),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / "smoothie.json", json.dumps(report, indent=2))
    write_text(RESULTS / "smoothie.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
