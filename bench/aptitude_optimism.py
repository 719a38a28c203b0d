"""How much sharper the aptitude test's core items read the training models than a model new
to them: validation routing among the training models by their per-task accuracy on the core
items, against the same from as many other bank items per task (``validation_evidence:
sampled``'s draw, several seeds) and from the whole bank.

    python bench/aptitude_optimism.py                      # the family and model splits run
    python bench/aptitude_optimism.py --runs "mmlu_pro family 0"

The core items are chosen on the training models' outcomes (items whose score follows each
model's ability), so a training model read from them looks as if 10 items per task told its
per-task strengths almost as well as its whole bank. Only validation queries and training
models are read: no held-out model's label. Each per-task accuracy is shrunk toward the
model's overall one by ``w`` pseudo-counts (w huge: the overall accuracy, one model for
every query). Writes bench/results/aptitude_optimism.json and a section of
bench/results/README.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from results_readme import replace_section
from tqdm import tqdm

from data_builders.atomic import write_json
from train.cli import parse
from train.data import prepare, validation_items

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TITLE = "Aptitude items read training models sharper than new ones"
RUNS = ("mmlu_pro family 0", "mmlu_pro family 1", "mmlu_pro family 2", "mmlu_pro family 3",
        "llmrouter model 0", "llmrouter model 1")
WEIGHTS = (2.0, 8.0, 32.0, 128.0, float("inf"))


def routed_by_items(data, items: list[str] | None, weight: float) -> float:
    """Validation routed accuracy among the fitted models, each query sent to the model of
    the best per-task accuracy on ``items`` (None: the whole bank without the core items),
    shrunk toward its overall accuracy by ``weight`` pseudo-counts."""
    bank, models, tasks = data.bank, data.train_models, data.tasks
    read = (np.isin(np.asarray(bank.item_ids), items) if items is not None else
            ~np.isin(np.asarray(bank.item_ids), sorted(data.aptitude.item_ids)))
    outcomes = bank.outcomes[:len(models)]
    has = ~np.isnan(outcomes) & read[None]
    one_hot = np.eye(len(tasks))[bank.tasks]
    right, count = np.where(has, outcomes, 0.0) @ one_hot, has.astype(float) @ one_hot
    overall = right.sum(axis=1) / count.sum(axis=1)
    table = (np.broadcast_to(overall[:, None], right.shape) if np.isinf(weight)
             else (right + weight * overall[:, None]) / (count + weight))
    scores = data.validation.scores[models].to_numpy(dtype=float)
    query_tasks = np.array([tasks.index(t) for t in data.validation.tasks])
    complete = ~np.isnan(scores).any(axis=1)
    picks = table[:, query_tasks[complete]].argmax(axis=0)
    return float(scores[complete][np.arange(complete.sum()), picks].mean())


def measure(data_name: str, split: str, seed: int, draws: int) -> dict:
    _, config = parse(["--config", "train/recipes/cpu_default.yaml", "--data", data_name,
                       "--split", split, "--seed", str(seed), "--use_llm", "false",
                       "--llm_steps", "0", "--progress", "false"])
    data = prepare(config, progress=False)
    core = sorted(data.aptitude.item_ids)
    sampled = [validation_items(data, "sampled", draw) for draw in range(draws)]
    row = {"data": data_name, "split": split, "seed": seed,
           "train_models": len(data.train_models), "validation_queries": len(data.validation),
           "core_items": len(core), "draws": draws, "by_weight": {}}
    for w in WEIGHTS:
        drawn = [routed_by_items(data, items, w) for items in sampled]
        row["by_weight"][str(w)] = {"core": routed_by_items(data, core, w),
                                    "sampled_mean": float(np.mean(drawn)),
                                    "sampled_sd": float(np.std(drawn, ddof=1)),
                                    "bank": routed_by_items(data, None, w)}
    return row


def table(rows: list[dict]) -> str:
    lines = ["| data, split, seed | models | read from | "
             + " | ".join(f"w={'inf' if np.isinf(w) else f'{w:g}'}" for w in WEIGHTS) + " |",
             "|---|---|---|" + "---|" * len(WEIGHTS)]
    for r in rows:
        name = f"{r['data']} {r['split']} {r['seed']}"
        for key, label in (("core", f"core items ({r['core_items']})"),
                           ("sampled_mean", f"sampled, mean of {r['draws']}"),
                           ("bank", "whole bank")):
            cells = " | ".join(f"{r['by_weight'][str(w)][key]:.4f}" for w in WEIGHTS)
            lines.append(f"| {name} | {r['train_models']} | {label} | {cells} |")
            name = ""
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS),
                        help='"DATA SPLIT SEED" triples (default: the family and model splits)')
    parser.add_argument("--draws", type=int, default=20, help="sampled item sets per split")
    parser.add_argument("--out", type=Path, default=RESULTS / "aptitude_optimism.json")
    args = parser.parse_args(argv)
    runs = []
    for spec in args.runs:
        parts = spec.split()
        if len(parts) != 3 or not parts[2].isdigit():
            parser.error(f'--runs takes "DATA SPLIT SEED", got {spec!r}')
        runs.append((parts[0], parts[1], int(parts[2])))
    rows = [measure(*run, args.draws) for run in tqdm(runs, desc="splits", unit="split")]
    write_json(args.out, {"command": "python bench/aptitude_optimism.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "weights": list(map(str, WEIGHTS)),
        "runs": rows}, indent=2)
    body = (f"`python bench/aptitude_optimism.py` ({args.out.name}). Validation routed accuracy "
            "among the training models, each query sent to the model with the best per-task "
            "accuracy read from the given items, shrunk toward its overall accuracy by w "
            "pseudo-counts (w=inf: the overall accuracy alone). Validation queries and "
            "training models only. The core items were chosen on these models' train outcomes; "
            "'sampled' is what `validation_evidence: sampled` reads (as many other bank items "
            "per task).\n\n" + table(rows) + "\n")
    if args.out.parent == RESULTS:
        replace_section(TITLE, body)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
