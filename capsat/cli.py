"""The ``capsat`` command: ``eval | ls | validate | train | onboard | explain | route |
frontier``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from data_builders.errors import DataError
from data_builders.outcomes import MAX_QUERY_CHARS as MAX_CHARS_DEFAULT


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def cmd_eval(args) -> int:
    from .evaluation import evaluate, format_table

    result = evaluate(args.data, args.split, args.routers, models=_csv(args.models),
                      seed=args.seed, test_size=args.test_size,
                      validation_size=args.validation_size, held_out=_csv(args.held_out),
                      out_dir=args.out, plots=not args.no_plots, encoder=args.encoder,
                      tasks=_csv(args.tasks))
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


ACCELERATE_CONFIGS = ("cpu", "cpu_2proc", "single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2")


def accelerate_config_path(name: str) -> str:
    """A shipped accelerate config by name, or a path to the user's own."""
    from pathlib import Path

    if name in ACCELERATE_CONFIGS:
        import train

        return str(Path(train.__file__).resolve().parent / "accelerate_configs" / f"{name}.yaml")
    if not Path(name).is_file():
        raise FileNotFoundError(f"no accelerate config {name!r}: neither a shipped one "
                                f"({', '.join(ACCELERATE_CONFIGS)}) nor a file")
    return name


def cmd_train(args, rest: list[str]) -> int:
    """Wrap ``accelerate launch -m train`` with a shipped accelerate config (trl style)."""
    import subprocess

    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               accelerate_config_path(args.accelerate_config)]
    if args.num_processes:
        command += ["--num_processes", str(args.num_processes)]
    command += ["-m", "train", "--config", args.config, *rest]
    print("running:", " ".join(command), flush=True)
    return subprocess.call(command)


def cmd_onboard(args) -> int:
    from .capsat_model.router import CapsatRouter

    try:
        aptitude = json.loads(open(args.aptitude).read())
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", file=args.aptitude, line=err.lineno) from err
    if not isinstance(aptitude, dict):
        raise DataError("expected an object mapping task -> accuracy", file=args.aptitude)
    price = json.loads(args.price) if args.price else None
    router = CapsatRouter.from_pretrained(args.router)
    candidate = router.onboard(args.name, aptitude, price=price, replace=args.replace)
    router.save_pretrained(args.router)
    print(f"onboarded {args.name!r} into {args.router} ({len(router.models)} candidates)\n"
          f"representation: {candidate.representation}")
    return 0


def cmd_explain(args) -> int:
    from .capsat_model.explain import explain

    report = explain(args.router, args.data, split=args.split, seed=args.seed,
                     max_queries=args.max_queries, out_dir=args.out)
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {args.out}/abilities.csv, queries.csv and explain.json")
    return 0


def _route_config(args):
    from .routing import RouteConfig

    return RouteConfig(
        router=args.router, input=args.input, output=getattr(args, "output", "") or "",
        candidates=_csv(args.candidates), policy=getattr(args, "policy_spec", "max-accuracy"),
        field=args.field, id_field=args.id_field, chat=args.chat, max_chars=args.max_chars,
        input_format=args.input_format, output_format=getattr(args, "output_format", None),
        chunk_size=args.chunk_size, resume=getattr(args, "resume", False), strict=args.strict,
        prices=args.prices, output_tokens=args.output_tokens, fit_data=args.fit_data,
        fit_part=args.fit_part, seed=args.seed, work_dir=args.work_dir,
        shard=getattr(args, "shard", None), merge_only=getattr(args, "merge_only", False),
        keep_parts=getattr(args, "keep_parts", False),
        save_router=getattr(args, "save_router", None), progress=not args.no_progress)


def cmd_route(args) -> int:
    from .routing import run_route

    args.policy_spec = args.policy
    summary = run_route(_route_config(args))
    if summary is not None:  # the merging process reports
        print(summary.format())
        print(f"wrote {summary.output}, {summary.errors_file} and {args.output}.summary.json")
    return 0


def cmd_frontier(args) -> int:
    from .routing import frontier

    result = frontier(_route_config(args), args.policy, args.out, n_points=args.points)
    if result is not None:
        best = max((p for p in result["points"]
                    if p[f"{result['axes']['accuracy']}_accuracy"] is not None),
                   key=lambda p: p[f"{result['axes']['accuracy']}_accuracy"], default=None)
        print(f"{len(result['points'])} points ({result['axes']}); best accuracy "
              f"{best and best[result['axes']['accuracy'] + '_accuracy']:.4f}")
        print(f"wrote {args.out}/frontier.json and frontier.png")
    return 0


def _add_log_options(parser) -> None:
    """Options shared by ``route`` and ``frontier`` (see capsat.routing.RouteConfig)."""
    parser.add_argument("--router", required=True,
                        help="saved router directory, classic router name (fitted on "
                             "--fit-data) or CapSAT hub id")
    parser.add_argument("--input", required=True, help="log: JSONL, CSV or Parquet (.gz ok "
                                                        "for JSONL/CSV)")
    parser.add_argument("--candidates", help="comma-separated candidate pool (default: all)")
    parser.add_argument("--field", default="instruction",
                        help="instruction field: text, or OpenAI-style chat messages (the last "
                             "user turn is routed; system prompts and earlier turns are "
                             "ignored and counted)")
    parser.add_argument("--id-field", help="row id field (default: the line number)")
    parser.add_argument("--chat", action="store_true",
                        help="CSV: the field holds JSON-encoded chat messages")
    parser.add_argument("--max-chars", type=int, default=MAX_CHARS_DEFAULT,
                        help="reject longer instructions")
    parser.add_argument("--input-format", choices=["jsonl", "csv", "parquet"])
    parser.add_argument("--chunk-size", type=int, default=10_000,
                        help="rows per chunk (unit of resume and scale-out)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad row")
    parser.add_argument("--prices", help="JSON file (model -> cost per call, or "
                                         "{input_price, output_price} per million tokens), or a "
                                         "data set / outcome file (mean cost per call)")
    parser.add_argument("--output-tokens", type=int, default=256,
                        help="assumed answer length, for token prices")
    parser.add_argument("--fit-data", help="data set name or outcome file to fit a named "
                                           "router on")
    parser.add_argument("--fit-part", default="all", choices=["all", "train"],
                        help="fit on all of --fit-data, or on its train part only (query split "
                             "with --seed; a log built from the test part is then honest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", help="chunk parts directory (default OUTPUT.parts)")
    parser.add_argument("--no-progress", action="store_true")


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
    ev.add_argument("--tasks", help="comma-separated tasks to evaluate on (default: every "
                                     "task of the data)")
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

    tr = sub.add_parser("train", help="train a CapSAT router (wraps accelerate launch); "
                                      "further --field value pairs override the recipe")
    tr.add_argument("--config", required=True, help="YAML recipe, e.g. "
                                                    "train/recipes/cpu_default.yaml")
    tr.add_argument("--accelerate-config", default="cpu",
                    help=f"shipped ({', '.join(ACCELERATE_CONFIGS)}) or a path")
    tr.add_argument("--num-processes", type=int, help="override the config's process count")
    tr.set_defaults(func=cmd_train, passes_rest=True)

    on = sub.add_parser("onboard", help="add a model to a CapSAT router from its aptitude-test "
                                        "results alone (no retraining)")
    on.add_argument("--router", required=True, help="saved CapSAT router directory")
    on.add_argument("--name", required=True, help="the new candidate's name")
    on.add_argument("--aptitude", required=True, help="JSON file: task -> accuracy on the "
                                                      "router's core items")
    on.add_argument("--price", help='JSON object, e.g. {"input_price": 0.2, "output_price": 0.2}')
    on.add_argument("--replace", action="store_true", help="update an existing candidate")
    on.set_defaults(func=cmd_onboard)

    ex = sub.add_parser("explain", help="write a CapSAT router's IRT parameters: model "
                                        "abilities, query difficulty and discrimination")
    ex.add_argument("--router", required=True)
    ex.add_argument("--data", required=True)
    ex.add_argument("--split", default="query", choices=["query", "model", "task"])
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--max-queries", type=int, default=500,
                    help="explain a seeded sample of this many test queries (0 = all)")
    ex.add_argument("--out", required=True)
    ex.set_defaults(func=cmd_explain)

    ro = sub.add_parser("route", help="route every instruction of a log (JSONL, CSV, Parquet): "
                                      "streaming, resumable, cost-aware; runs under "
                                      "accelerate launch to scale out")
    _add_log_options(ro)
    ro.add_argument("--output", required=True,
                    help="routed rows (errors go to OUTPUT.errors.jsonl, the summary to "
                         "OUTPUT.summary.json)")
    ro.add_argument("--output-format", choices=["jsonl", "csv", "parquet"],
                    help="default: the input's")
    ro.add_argument("--policy", default="max-accuracy",
                    help="max-accuracy | tradeoff:LAMBDA | threshold:T | budget:B")
    ro.add_argument("--resume", action="store_true",
                    help="continue an interrupted run (keeps its finished chunks)")
    ro.add_argument("--shard", help="i/N: score chunks k with k %% N == i only (several "
                                    "machines on a shared disk; then --merge-only)")
    ro.add_argument("--merge-only", action="store_true",
                    help="merge the parts of finished --shard runs into the output")
    ro.add_argument("--keep-parts", action="store_true",
                    help="keep OUTPUT.parts after the merge")
    ro.add_argument("--save-router", help="also save the fitted router to this directory")
    ro.set_defaults(func=cmd_route)

    fr = sub.add_parser("frontier", help="sweep a policy's knob over a (labelled) log and plot "
                                         "accuracy against cost, single models as points")
    _add_log_options(fr)
    fr.add_argument("--policy", required=True, choices=["tradeoff", "threshold", "budget"])
    fr.add_argument("--points", type=int, default=25, help="knob values swept")
    fr.add_argument("--out", required=True, help="directory for frontier.json and "
                                                 "frontier.png")
    fr.set_defaults(func=cmd_frontier)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passes_rest", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args, rest) if getattr(args, "passes_rest", False) else args.func(args)
    except (DataError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"capsat {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
