"""Train, onboard and evaluate one CapSAT router, end to end, on the splits of `capsat eval`.

    python bench/capsat_runs.py --name mmlu_pro_all --recipe train/recipes/gpu_default.yaml
    python bench/capsat_runs.py --name llmrouter --recipe train/recipes/gpu_default.yaml \\
        -- --data llmrouter
    python bench/capsat_runs.py --name mmlu_pro_model_split --recipe ... -- --split model

Everything after ``--`` overrides the recipe, as on `capsat train`'s command line. Steps:

1. train (``train.cli.main``: best router by validation AUC in ``OUT/NAME/train/best``);
2. with ``--split model``: onboard every held-out model into a copy of that router from its
   aptitude-test results alone (``CapsatRouter.onboard``, no retraining), in
   ``OUT/NAME/router``; otherwise ``router`` is the trained one;
3. evaluate it on the test part of the same split and seed (``capsat eval --routers
   capsat:PATH``), writing ``OUT/NAME/eval/results.json`` and ``results.md``.

The classic routers' figures on the same splits are in ``bench/results/<data>.json`` (from
``bench/compare_routers.py``); ``--with-classic`` evaluates them in the same run instead.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="run name: the folder under --out")
    parser.add_argument("--recipe", required=True, help="training recipe (YAML)")
    parser.add_argument("--out", default="runs/capsat_bench")
    parser.add_argument("--with-classic", default="",
                        help="comma-separated classic routers to evaluate beside CapSAT")
    parser.add_argument("--skip-train", action="store_true",
                        help="reuse OUT/NAME/train/best from an earlier run")
    args = parser.parse_args(argv)

    from capsat.capsat_model.router import CapsatRouter
    from capsat.evaluation.harness import evaluate
    from data_builders.atomic import write_json
    from train.cli import main as train_main
    from train.cli import parse
    from train.data import prepare

    root = Path(args.out) / args.name
    train_argv = ["--config", args.recipe, "--output_dir", str(root / "train"), *rest]
    _, config = parse(train_argv)
    started = time.perf_counter()
    if not args.skip_train:
        train_main(train_argv)
    train_seconds = time.perf_counter() - started

    router_dir = root / "train" / "best"
    onboarded = []
    if config.split == "model":
        data = prepare(config)
        router = CapsatRouter.from_pretrained(str(router_dir))
        for candidate in data.candidates:
            if candidate.name not in router.models:
                router.onboard(candidate.name, candidate.aptitude, candidate.price)
                onboarded.append(candidate.name)
        router.save_pretrained(root / "router")  # atomic
        router_dir = root / "router"
        del router

    routers = [f"capsat:{router_dir}", *[r for r in args.with_classic.split(",") if r]]
    started_eval = time.perf_counter()
    result = evaluate(config.data, config.split, routers, models=config.models or None,
                      seed=config.seed, test_size=config.test_size,
                      validation_size=config.validation_size,
                      held_out=config.held_out or None, out_dir=root / "eval")
    summary = {"name": args.name, "recipe": args.recipe, "overrides": rest,
               "train_seconds": round(train_seconds, 1),
               "eval_seconds": round(time.perf_counter() - started_eval, 1),
               "onboarded_held_out_models": onboarded, "split": result.split,
               "reference": result.reference, "routers": result.routers,
               "skipped": result.skipped}
    write_json(root / "summary.json", summary, indent=2)
    for label, row in result.routers.items():
        print(f"{args.name} {label}: AUC {row['auc']:.4f} routed accuracy "
              f"{row['routed_accuracy']:.4f} log-loss {row['log_loss']:.4f} ECE {row['ece']:.4f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
