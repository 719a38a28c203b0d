"""Train and evaluate one CapSAT router, end to end, on the splits of `capsat eval`, beside the
baselines on the same rows, with paired bootstrap intervals.

    python bench/capsat_runs.py --name mmlu_pro_all --recipe train/recipes/cpu_default.yaml
    python bench/capsat_runs.py --name llmrouter --recipe ... -- --data llmrouter
    python bench/capsat_runs.py --name mmlu_family --recipe ... --aptitude-items 140,280 \\
        -- --split family

Everything after ``--`` overrides the recipe, as on `capsat train`'s command line. Steps:

1. train (``train.cli.main``): the best router by validation in ``OUT/NAME/train/best``;
2. for every aptitude size (model and family splits; the query split uses the recipe's):
   ``capsat eval`` on the test part of the same split and seed with ``capsat:PATH`` and the
   baselines (in a model or family split the harness onboards every held-out model into each
   router that can, from its results on the aptitude items alone);
3. paired bootstrap (95%) of CapSAT's routed score, query AUC and pooled AUC against every
   baseline and reference, on the same test queries.

Writes ``OUT/NAME/summary.{json,md}`` and ``eval_<items>/results.{json,md}``; ``--results DIR``
copies the summary and results there (bench/results/...).

    python bench/capsat_runs.py --render runs/capsat_bench/NAME/summary.json   # the table again
    python bench/capsat_runs.py --pair runs/capsat_bench/A runs/capsat_bench/B  # B - A, paired
    python bench/capsat_runs.py --seeds RUN_SEED0 RUN_SEED1 ...  # the same data over seeds
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

QUERY_BASELINES = ["best_single", "knn", "kmeans", "classifier", "multilabel", "irt", "mf",
                   "aptitude_prior", "knn_aptitude"]
ONBOARDING_BASELINES = ["aptitude_prior", "knn_aptitude"]
REFERENCES = ["best_single", "per_task_best_single"]
PRIOR = "aptitude_prior"


def interval(d: dict | None) -> str:
    """A paired difference as "+d [low, high]"; empty where there is none (a query AUC with
    one candidate)."""
    if d is None or d.get("difference") is None:
        return ""
    return f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def render(summary: dict) -> str:
    """summary.json as Markdown: every router's figures, then CapSAT minus each other router
    with its paired bootstrap 95% interval."""
    lines = [f"# {summary['name']}", "",
             f"Recipe `{summary['recipe']}` {' '.join(summary['overrides'])}; training "
             f"{summary['train_seconds'] / 60:.1f} min (wall, 2 cores; 0 with --skip-train)."]
    for size, run in summary["evaluations"].items():
        ref = run["reference"]
        split = run["split"]
        lines += ["", f"## {size} aptitude items, {split['kind']} split (seed {split['seed']}: "
                      f"{split['test_queries']} test queries, {split['train_models']} train / "
                      f"{split['test_models']} test models; scoring and baselines "
                      f"{run['eval_seconds'] / 60:.1f} min)", "",
                  f"References: best single {ref['best_single']:.4f} "
                  f"({ref['best_single_model']}, chosen on {ref['chosen_on']}); per-task best "
                  f"single {ref.get('per_task_best_single', float('nan')):.4f}; oracle "
                  f"{ref['oracle']:.4f}.", "",
                  "| router | routed accuracy | query AUC | AUC | log-loss | gap closed | "
                  "gap closed (per-task) |", "|---|---|---|---|---|---|---|"]
        for name, row in run["routers"].items():
            cells = [row.get(k) for k in ("routed_accuracy", "query_auc", "auc", "log_loss",
                                          "gap_closed", "gap_closed_per_task")]
            lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.4f}"
                                                     for v in cells) + " |")
        if run["capsat_minus"]:
            lines += ["", "| CapSAT minus | routed accuracy [95% CI] | query AUC [95% CI] | "
                          "AUC [95% CI] |", "|---|---|---|---|"]
            for other, row in run["capsat_minus"].items():
                cells = []
                for key in ("routed_accuracy", "query_auc", "auc"):
                    cells.append(interval(row.get(key)))
                lines.append(f"| {other} | " + " | ".join(cells) + " |")
        if run.get("skipped"):
            lines += ["", f"Skipped: {run['skipped']}"]
    return "\n".join(lines) + "\n"


def pair(run_a: Path, run_b: Path) -> str:
    """CapSAT's routed score in run B minus run A (two runs of this script: another option,
    the same split), paired over the same test queries, per aptitude size, with each run's
    pooled AUC over the aptitude prior beside (where both evaluated it)."""
    import json

    from capsat.evaluation.compare import paired_bootstrap

    lines = [f"{run_b.name} - {run_a.name}", "",
             "| items | routed B − A | AUC − prior: A | AUC − prior: B |", "|---|---|---|---|"]
    sizes = sorted(p.name for p in run_a.glob("eval_*") if (p / "results.json").exists())
    if not sizes:
        raise FileNotFoundError(f"{run_a}: no eval_<items>/results.json (not a run folder?)")
    for size in sizes:
        files = [run / size / "results.json" for run in (run_a, run_b)]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: run B has no evaluation at {size[5:]} items")
        a, b = (json.loads(f.read_text()) for f in files)
        if a["query_ids"] != b["query_ids"]:
            raise ValueError(f"{files[0]} and {files[1]}: different test queries (another "
                             f"split or seed), so no paired difference")
        routed = paired_bootstrap(b["per_query"]["capsat:best"]["score"],
                                  a["per_query"]["capsat:best"]["score"])
        over_prior = [f"{r['routers']['capsat:best']['auc'] - r['routers'][PRIOR]['auc']:+.4f}"
                      if PRIOR in r["routers"] else "" for r in (a, b)]
        lines.append(f"| {size[5:]} | {interval(routed)} | {over_prior[0]} | {over_prior[1]} |")
    return "\n".join(lines)


CLASSIC = ["knn", "kmeans", "classifier", "multilabel", "irt", "mf"]


def over_seeds(runs: list[Path]) -> str:
    """Query-split runs of one data set on several seeds: per seed, CapSAT minus kNN, the best
    classic router and the per-task best single model (routed), and its query AUC minus the
    best classic one's (the best picked on test per seed: the strictest comparison); then the
    mean over seeds, with an approximate 95% interval from the per-seed bootstrap standard
    errors (interval width / 3.92) taken as independent (the seeds' test parts overlap).
    A saved router paired in every run (a ``capsat:FOLDER`` baseline, say the same recipe with
    one option off) gets two more columns: routed accuracy and query AUC, CapSAT minus it."""
    import json
    import math

    evaluations = []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        (size, evaluation), *more = summary["evaluations"].items()
        if more or evaluation["split"]["kind"] != "query":
            raise ValueError(f"{run}: not a query-split run (one evaluation)")
        evaluations.append(evaluation)
    saved = sorted(set.intersection(*(
        {n for n in e["capsat_minus"] if n.startswith("capsat:")} for e in evaluations)))
    keys = ["knn", "classic", "per_task", "query_auc"]
    header = ("| run | seed | CapSAT routed; query AUC | − kNN | − best classic (routed) | "
              "− per-task best | query AUC − best classic's |")
    for label in saved:
        keys += [f"{label} routed", f"{label} query_auc"]
        header += f" − {label} (routed) | − {label} (query AUC) |"
    per_seed = {k: [] for k in keys}
    lines = [header, "|---" * (3 + len(keys)) + "|"]
    for run, evaluation in zip(runs, evaluations):
        routers, minus = evaluation["routers"], evaluation["capsat_minus"]
        best = max(CLASSIC, key=lambda n: routers[n]["routed_accuracy"])
        best_query_auc = max(CLASSIC, key=lambda n: routers[n]["query_auc"])
        cells = {"knn": minus["knn"]["routed_accuracy"],
                 "classic": minus[best]["routed_accuracy"],
                 "per_task": minus["per_task_best_single"]["routed_accuracy"],
                 "query_auc": minus[best_query_auc]["query_auc"]}
        for label in saved:
            cells[f"{label} routed"] = minus[label]["routed_accuracy"]
            cells[f"{label} query_auc"] = minus[label]["query_auc"]
        for key in keys:
            per_seed[key].append(cells[key])
        mine = routers["capsat:best"]
        lines.append(f"| {run.name} | {evaluation['split']['seed']} | "
                     f"{mine['routed_accuracy']:.4f}; {mine['query_auc']:.4f} | "
                     f"{interval(cells['knn'])} | {best}: {interval(cells['classic'])} | "
                     f"{interval(cells['per_task'])} | {best_query_auc}: "
                     f"{interval(cells['query_auc'])} |"
                     + "".join(f" {interval(cells[k])} |" for k in keys[4:]))

    def mean(values: list[dict]) -> str:
        mu = sum(v["difference"] for v in values) / len(values)
        se = math.sqrt(sum(((v["high"] - v["low"]) / 3.92) ** 2 for v in values)) / len(values)
        at_least = sum(v["difference"] >= 0 for v in values)
        return (f"{mu:+.4f} [{mu - 1.96 * se:+.4f}, {mu + 1.96 * se:+.4f}] "
                f"({at_least}/{len(values)} ≥ 0)")
    lines.append(f"| mean of {len(runs)} | | | " + " | ".join(mean(per_seed[k]) for k in keys)
                 + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--render"]:
        import json

        for path in argv[1:]:
            print(render(json.loads(Path(path).read_text())))
        return 0
    if argv[:1] == ["--pair"]:
        if len(argv) != 3:
            raise SystemExit("usage: capsat_runs.py --pair RUN_A RUN_B (two run folders)")
        print(pair(Path(argv[1]), Path(argv[2])))
        return 0
    if argv[:1] == ["--seeds"]:
        if len(argv) < 3:
            raise SystemExit("usage: capsat_runs.py --seeds RUN RUN [RUN ...] (query-split run "
                             "folders of one data set)")
        print(over_seeds([Path(p) for p in argv[1:]]))
        return 0
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="run name: the folder under --out")
    parser.add_argument("--recipe", required=True, help="training recipe (YAML)")
    parser.add_argument("--out", default="runs/capsat_bench")
    parser.add_argument("--baselines", help="comma-separated routers beside CapSAT (default: "
                                            "every classic router on a query split, the "
                                            "onboarding baselines on a model split)")
    parser.add_argument("--aptitude-items", default="140",
                        help="comma-separated aptitude test sizes to evaluate with")
    parser.add_argument("--skip-train", action="store_true",
                        help="reuse OUT/NAME/train/best from an earlier run")
    parser.add_argument("--results", help="also copy summary and results to this folder")
    args = parser.parse_args(argv)

    from capsat.evaluation.compare import compare
    from capsat.evaluation.harness import RouterSpec, evaluate, format_table
    from data_builders.atomic import write_json, write_text
    from data_builders.splits import MODEL_SPLITS
    from train.cli import main as train_main
    from train.cli import parse

    root = Path(args.out) / args.name
    train_argv = ["--config", args.recipe, "--output_dir", str(root / "train"), *rest]
    model_config, config = parse(train_argv)
    started = time.perf_counter()
    if not args.skip_train:
        train_main(train_argv)
    train_seconds = time.perf_counter() - started
    onboarding = config.split in MODEL_SPLITS
    baselines = (args.baselines.split(",") if args.baselines
                 else ONBOARDING_BASELINES if onboarding else QUERY_BASELINES)
    sizes = [int(x) for x in args.aptitude_items.split(",")]
    label = "capsat:best"
    summary = {"name": args.name, "recipe": args.recipe, "overrides": rest,
               "train_seconds": round(train_seconds, 1), "evaluations": {}}
    for size in sizes:
        t0 = time.perf_counter()
        result = evaluate(config.data, config.split, [f"capsat:{root / 'train' / 'best'}",
                                                      *baselines, "oracle"],
                          models=config.models or None, seed=config.seed,
                          test_size=config.test_size, validation_size=config.validation_size,
                          held_out=config.held_out or None, aptitude_items=size,
                          out_dir=root / f"eval_{size}")
        print(f"\n## {args.name}, {size} aptitude items\n{format_table(result)}", flush=True)
        rows = {name: {k: row.get(k) for k in ("routed_accuracy", "query_auc", "auc",
                                               "log_loss", "ece", "gap_closed",
                                               "gap_closed_per_task")}
                for name, row in result.routers.items()}
        # A baseline given as NAME:PATH (a saved router) is labelled NAME:FOLDER.
        labels = [RouterSpec.parse(b).label for b in baselines]
        others = [b for b in labels if b in result.routers] + REFERENCES
        comparisons = compare(result, label, others) if label in result.routers else {}
        summary["evaluations"][str(size)] = {
            "eval_seconds": round(time.perf_counter() - t0, 1), "split": result.split,
            "reference": {k: v for k, v in result.reference.items()
                          if k != "per_task_best_models"},
            "routers": rows, "skipped": result.skipped,
            "capsat_minus": comparisons}
        for other, row in comparisons.items():
            line = f"capsat - {other}: routed {interval(row['routed_accuracy'])}"
            for key, name in (("query_auc", "query AUC"), ("auc", "AUC")):
                if shown := interval(row.get(key)):
                    line += f"; {name} {shown}"
            print(line, flush=True)
    write_json(root / "summary.json", summary, indent=2)
    write_text(root / "summary.md", render(summary))
    if args.results:
        target = Path(args.results)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "summary.md"):
            shutil.copy(root / name, target / name)
        for size in sizes:
            for name in ("results.json", "results.md", "per_task_accuracy.png"):
                source = root / f"eval_{size}" / name
                if source.exists():
                    shutil.copy(source, target / f"eval_{size}_{name}")
        for name in ("log.jsonl", "train_summary.json"):
            source = root / "train" / name
            if source.exists():
                shutil.copy(source, target / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
