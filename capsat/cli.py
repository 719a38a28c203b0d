"""The ``capsat`` command: ``eval | ls | validate``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from data_builders.errors import DataError


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def cmd_eval(args) -> int:
    from .evaluation import evaluate, format_table

    result = evaluate(args.data, args.split, args.routers, models=_csv(args.models),
                      seed=args.seed, test_size=args.test_size,
                      validation_size=args.validation_size, held_out=_csv(args.held_out),
                      out_dir=args.out, plots=not args.no_plots, encoder=args.encoder)
    print(format_table(result))
    if args.out:
        print(f"wrote {args.out}/results.json, results.md and plots")
    return 0


def cmd_ls(args) -> int:
    from data_builders.sources import SOURCES, shipped_path

    from .evaluation import METRICS
    from .routers import ROUTERS

    if args.what in ("routers", "all"):
        print("routers:")
        for name, klass in sorted(ROUTERS.items()):
            doc = (klass.__doc__ or "").strip().splitlines()[0] if klass.__doc__ else ""
            print(f"  {name:<16} {doc}")
            if args.verbose:
                for fname, help_text in klass.config_class.help().items():
                    default = {f.name: f.default for f in
                               dataclasses.fields(klass.config_class)}.get(fname)
                    print(f"      --{fname} (default {default!r}): {help_text}")
    if args.what in ("data", "all"):
        print("data sets (shipped):")
        for name in sorted(SOURCES):
            path = shipped_path(name)
            state = f"{path.stat().st_size / 1e6:.1f} MB" if path.exists() else "missing"
            print(f"  {name:<16} {state}")
    if args.what in ("metrics", "all"):
        print("metrics:")
        for name, metric in sorted(METRICS.items()):
            arrow = "higher" if metric.higher_is_better else "lower"
            print(f"  {name:<16} ({arrow} is better) {metric.help}")
    return 0


def cmd_validate(args) -> int:
    from data_builders.sources import load_outcomes

    options = {"layout": args.layout}
    if args.cost_unit:
        options["cost_unit"] = args.cost_unit
    if args.default_task:
        options["default_task"] = args.default_task
    table = load_outcomes(args.path, **options)
    summary = {"file": args.path, "queries": len(table), "models": table.models,
               "tasks": table.queries["task"].value_counts().to_dict(),
               "missing_scores": int(table.scores.isna().sum().sum()),
               "cost_unit": table.cost_unit,
               "has_responses": table.responses is not None}
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capsat", description="Route instructions to LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="compare routers on one data set and split")
    ev.add_argument("--data", required=True,
                    help="mmlu_pro, llmrouter, routerbench, or a path to your own outcome file")
    ev.add_argument("--split", default="query", choices=["query", "model", "task"])
    ev.add_argument("--routers", default="all",
                    help="comma-separated registry names (or NAME:PATH for a saved router); "
                         "'all' for every registered router")
    ev.add_argument("--models", help="comma-separated candidate pool (default: every model)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--test-size", type=float, default=0.2)
    ev.add_argument("--validation-size", type=float, default=0.1,
                    help="share of train carved out for hyper-parameters and early stopping")
    ev.add_argument("--held-out", help="models (--split model) or tasks (--split task) to hold "
                                       "out; default: a seeded share")
    ev.add_argument("--encoder", default="all-MiniLM-L6-v2", help="query encoder")
    ev.add_argument("--out", help="directory for results.json, results.md and PNG plots")
    ev.add_argument("--no-plots", action="store_true")
    ev.set_defaults(func=cmd_eval)

    ls = sub.add_parser("ls", help="list routers, data sets and metrics")
    ls.add_argument("what", nargs="?", default="all", choices=["all", "routers", "data",
                                                                 "metrics"])
    ls.add_argument("-v", "--verbose", action="store_true", help="show router config fields")
    ls.set_defaults(func=cmd_ls)

    va = sub.add_parser("validate", help="check an outcome file (CSV, JSONL, Parquet) and "
                                         "summarise it")
    va.add_argument("path")
    va.add_argument("--layout", default="auto", choices=["auto", "wide", "long"])
    va.add_argument("--cost-unit", choices=["usd", "output_chars"])
    va.add_argument("--default-task", help="task for every row when the file has no task column")
    va.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"capsat {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
