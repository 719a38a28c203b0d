"""The ``capsat`` command: ``eval | ls | validate | train | onboard | explain | route |
frontier | serve | calibrate | aptitude | push | pull``.

Errors from user input (bad files, flags, names) are one line naming the file, line and the
flag or field; ``CAPSAT_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from data_builders.errors import DataError
from data_builders.outcomes import COST_UNITS
from data_builders.outcomes import MAX_QUERY_CHARS as MAX_CHARS_DEFAULT
from data_builders.splits import SPLIT_KINDS

UNKNOWN_PROVENANCE_HELP = ("score a saved router that keeps no record of the data it was "
                           "fitted on (it may have seen the test queries)")


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _json_option(text: str | None, flag: str):
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{flag} is not valid JSON ({err.msg}): {text!r}", field=flag) from None


def load_options(args) -> dict:
    """The generic importer's options a user's outcome file takes (eval, validate)."""
    options = {}
    if getattr(args, "layout", "auto") != "auto":
        options["layout"] = args.layout
    if getattr(args, "cost_unit", None):
        options["cost_unit"] = args.cost_unit
    if getattr(args, "default_task", None):
        options["default_task"] = args.default_task
    return options


def parse_router_args(items: list[str] | None) -> dict[str, dict]:
    """``--router-args knn.k=50,knn.prior_weight=4 --router-args irt.dim=8`` -> per router,
    its config overrides (checked against the router's config fields and types)."""
    from .routers import ROUTERS

    out: dict[str, dict] = {}
    import re

    for item in items or []:
        # Split at commas that start the next NAME.OPTION=, so list values keep theirs.
        for part in filter(None, (p.strip() for p in re.split(r",(?=\s*\w+\.\w+=)", item))):
            name, dot, rest = part.partition(".")
            option, eq, value = rest.partition("=")
            if not dot or not eq or not option:
                raise DataError(f"expected NAME.OPTION=VALUE, got {part!r}",
                                field="--router-args")
            if name not in ROUTERS:
                raise DataError(f"unknown router {name!r} in {part!r}", field="--router-args")
            entry = ROUTERS[name]
            if entry.trained_with:
                raise DataError(f"{name} is made with `{entry.trained_with}`; its options are "
                                f"set there", field="--router-args")
            try:
                out.setdefault(name, {})[option] = entry.config_class.parse_option(option,
                                                                                   value)
            except DataError as err:
                raise DataError(f"{part!r}: {err.reason}", field="--router-args") from None
    return out


def _add_load_options(parser) -> None:
    parser.add_argument("--layout", default="auto", choices=["auto", "wide", "long"],
                        help="your outcome file's layout (see data_builders/sources/generic.py)")
    parser.add_argument("--cost-unit", choices=list(COST_UNITS),
                        help="unit of your file's cost column")
    parser.add_argument("--default-task", help="task for every row when your file has no task "
                                               "column")


# ------------------------------------------------------------------ commands
def cmd_eval(args) -> int:
    from .evaluation import evaluate, format_table

    result = evaluate(args.data, args.split, args.routers, models=_csv(args.models),
                      seed=args.seed, test_size=args.test_size,
                      validation_size=args.validation_size, held_out=_csv(args.held_out),
                      out_dir=args.out, plots=not args.no_plots, encoder=args.encoder,
                      tasks=_csv(args.tasks), router_args=parse_router_args(args.router_args),
                      load_options=load_options(args),
                      allow_unknown_provenance=args.allow_unknown_provenance)
    print(format_table(result))
    if args.out:
        print(f"wrote {args.out}/results.json, results.md and plots")
    return 0


def cmd_ls(args) -> int:
    from data_builders.sources import SOURCES, shipped_path

    from .evaluation.metrics import METRICS
    from .routers import ROUTERS

    if args.what in ("routers", "all"):
        print("routers" + (" (set an option with `capsat eval --router-args NAME.OPTION=VALUE`)"
                           if args.verbose else "") + ":")
        for name, entry in sorted(ROUTERS.items()):
            print(f"  {name:<16} {entry.summary}")
            if args.verbose and entry.trained_with:
                print(f"      made with `{entry.trained_with}` (its options: "
                      f"`{entry.trained_with} --help`), evaluated as {name}:PATH")
            elif args.verbose:
                defaults = entry.config_class.defaults()
                for option, help_text in entry.config_class.help().items():
                    print(f"      {name}.{option}={json.dumps(defaults[option])}  {help_text}")
    if args.what in ("data", "all"):
        print("data sets (shipped):")
        for name in sorted(SOURCES):
            path = shipped_path(name)
            state = f"{path.stat().st_size / 1e6:.1f} MB" if path.exists() else "missing"
            print(f"  {name:<16} {state}")
    if args.what in ("metrics", "all"):
        print("metrics:")
        for name, metric in METRICS.items():
            arrow = "higher" if metric.higher_is_better else "lower"
            print(f"  {name:<26} ({arrow} is better) {metric.help}")
    return 0


def cmd_validate(args) -> int:
    from data_builders.sources import load_outcomes

    table = load_outcomes(args.path, **load_options(args))
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
        raise DataError(f"no accelerate config {name!r}: neither a shipped one "
                        f"({', '.join(ACCELERATE_CONFIGS)}) nor a file",
                        field="--accelerate-config")
    return name


def train_fields_help() -> str:
    """Every field a recipe sets and the command line overrides, with its help."""
    import dataclasses

    from train.config import TrainConfig

    from .capsat_model.config import CapsatConfig

    lines = ["recipe fields (override any with --field-name VALUE; underscores work too):"]
    for title, klass in (("the model (CapsatConfig)", CapsatConfig),
                         ("the run (TrainConfig)", TrainConfig)):
        lines.append(f"  {title}:")
        defaults = dataclasses.asdict(klass())
        for f in dataclasses.fields(klass):
            flag = "--" + f.name.replace("_", "-")
            lines.append(f"    {flag} (default {json.dumps(defaults[f.name])})")
            lines.append(f"        {f.metadata.get('help', '')}")
    return "\n".join(lines)


def cmd_train(args, rest: list[str]) -> int:
    """Wrap ``accelerate launch -m train`` with a shipped accelerate config (trl style)."""
    import subprocess

    from train.cli import parse

    extra = ["--no_progress"] if args.no_progress else []
    # Check the recipe and every override here, before accelerate starts processes.
    parse(["--config", args.config, *rest, *extra])
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               accelerate_config_path(args.accelerate_config)]
    if args.num_processes:
        command += ["--num_processes", str(args.num_processes)]
    command += ["-m", "train", "--config", args.config, *rest, *extra]
    print("running:", " ".join(command), flush=True)
    return subprocess.call(command)


def _read_aptitude(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            values = json.load(fh)
    except FileNotFoundError:
        raise DataError("no such file", file=path, field="--aptitude") from None
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", file=path, line=err.lineno) from None
    if not isinstance(values, dict):
        raise DataError("expected an object mapping core item id -> score (or task -> "
                        "accuracy)", file=path)
    return values


def cmd_onboard(args) -> int:
    from pathlib import Path

    from .routing.resolve import resolve_router

    local = Path(args.router).is_dir()
    if args.out is None and not local:
        raise DataError(f"{args.router!r} is not a folder of yours: name the folder to write the "
                        f"onboarded router to with --out", field="--out")
    out = args.out or args.router
    results = _read_aptitude(args.aptitude)
    price = _json_option(args.price, "--price")
    router = resolve_router(args.router).router
    if not router.can_onboard:
        raise DataError(f"a {router.name} router cannot onboard a new model (routers that can: "
                        f"capsat, aptitude_prior, knn_aptitude)", field="--router")
    if args.name in router.models and not args.replace:
        raise DataError(f"{args.name!r} is already a candidate of {args.router}; pass "
                        f"--replace to update it", field="--name")
    router.onboard(args.name, results, price=price, replace=args.replace)
    router.save(out)
    print(f"onboarded {args.name!r} into {out} ({len(router.models)} candidates) from "
          f"{len(results)} aptitude results")
    return 0


def cmd_aptitude_export(args) -> int:
    from data_builders.atomic import atomic_open

    from .routing.resolve import resolve_router

    router = resolve_router(args.router).router
    items = getattr(router, "aptitude_items", None)
    if not items:
        raise DataError(f"the {router.name} router ships no aptitude items", field="--router")
    with atomic_open(args.out) as fh:
        for item in items:
            fh.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
    gradable = sum(item.grading != "none" for item in items)
    tasks = sorted({item.task for item in items})
    print(f"wrote {args.out}: {len(items)} aptitude items over {len(tasks)} tasks "
          f"({gradable} with a reference answer and a grading rule)")
    return 0


def cmd_explain(args) -> int:
    from .capsat_model.explain import explain

    report = explain(args.router, args.data, split=args.split, seed=args.seed,
                     max_queries=args.max_queries, out_dir=args.out,
                     allow_unknown_provenance=args.allow_unknown_provenance)
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {args.out}/abilities.csv, queries.csv and explain.json")
    return 0


def _route_config(args):
    from .routing import RouteConfig

    return RouteConfig(
        router=args.router, input=args.input, output=getattr(args, "output", "") or "",
        candidates=_csv(args.candidates), policy=getattr(args, "policy_spec", "max-accuracy"),
        field=args.field, id_field=args.id_field, task_field=args.task_field, chat=args.chat,
        max_chars=args.max_chars,
        input_format=args.input_format, output_format=getattr(args, "output_format", None),
        chunk_size=args.chunk_size, resume=getattr(args, "resume", False), strict=args.strict,
        prices=args.prices, output_tokens=args.output_tokens, fit_data=args.fit_data,
        fit_part=args.fit_part, seed=args.seed, work_dir=args.work_dir,
        shard=getattr(args, "shard", None), merge_only=getattr(args, "merge_only", False),
        keep_parts=getattr(args, "keep_parts", False),
        save_router=getattr(args, "save_router", None), progress=not args.no_progress,
        allow_unknown_provenance=args.allow_unknown_provenance)


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


def cmd_serve(args) -> int:
    from .serving.app import serve
    from .serving.config import ServeConfig, from_args

    serve(from_args(ServeConfig, args))
    return 0


def cmd_calibrate(args) -> int:
    from .serving.calibrate import CalibrateConfig, calibrate, format_result
    from .serving.config import from_args

    result = calibrate(from_args(CalibrateConfig, args))
    print(format_result(result))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_aptitude_run(args) -> int:
    from .serving.aptitude_run import AptitudeRun, run_aptitude

    api_key = "unused"
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env) or ""
        if not api_key:
            raise DataError(f"environment variable {args.api_key_env} is not set",
                            field="api_key_env")
    run = AptitudeRun(args.endpoint, args.model, args.out, api_key=api_key,
                      concurrency=args.concurrency, max_tokens=args.max_tokens,
                      timeout=args.timeout)
    summary = run_aptitude(args.router, run, items_file=args.items,
                           items_per_task=args.items_per_task, name=args.name,
                           price=_json_option(args.price, "--price"), replace=args.replace)
    print(f"aptitude of {summary['name']!r} ({summary['items']} items, {summary['resumed']} "
          f"resumed, {summary['unparseable']} unparseable replies; accuracy "
          f"{summary['accuracy']:.3f}):")
    for task, accuracy in summary["aptitude"].items():
        print(f"  {task:<20} {accuracy:.3f}")
    if summary["asked_now"]:
        print(f"time per item: {summary['wall_seconds_per_item']:.2f} s wall at concurrency "
              f"{summary['concurrency']} ({summary['mean_call_seconds']:.2f} s per call); "
              f"{summary['asked_now']} asked in {summary['wall_seconds']:.1f} s")
    print(f"onboarded into {summary['router']} ({summary['candidates']} candidates); wrote "
          f"{args.out}/replies.jsonl, aptitude.json and summary.json")
    return 0


def cmd_push(args) -> int:
    from .hub import push

    url = push(args.router_dir, args.repo_id, private=args.private,
               token=os.environ.get(args.token_env) if args.token_env else None)
    print(f"pushed {args.router_dir} to {args.repo_id}: {url}")
    return 0


def cmd_pull(args) -> int:
    from .hub import pull

    path = pull(args.repo_id, args.out_dir, revision=args.revision,
                token=os.environ.get(args.token_env) if args.token_env else None)
    print(f"pulled {args.repo_id} into {path}")
    return 0


# ------------------------------------------------------------------ parser
def _add_log_options(parser) -> None:
    """Options shared by ``route`` and ``frontier`` (see capsat.routing.RouteConfig)."""
    parser.add_argument("--router", required=True,
                        help="saved router directory, classic router name (fitted on "
                             "--fit-data), 'default' (the shipped CapSAT router) or a hub id")
    parser.add_argument("--input", required=True, help="log: JSONL, CSV or Parquet (.gz ok "
                                                        "for JSONL/CSV)")
    parser.add_argument("--candidates", help="comma-separated candidate pool (default: all)")
    parser.add_argument("--field", default="instruction",
                        help="instruction field: text, or OpenAI-style chat messages (the last "
                             "user turn is routed; system prompts and earlier turns are "
                             "ignored and counted)")
    parser.add_argument("--id-field", help="row id field (default: the line number)")
    parser.add_argument("--task-field", help="task label field: a task the router knows "
                                             "sharpens its routing; rows without one are "
                                             "routed from their text (counted in the summary)")
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
    parser.add_argument("--fit-part", default="train", choices=["train", "all"],
                        help="fit on the train part of --fit-data's query split (--seed; the "
                             "default: a log built from the test part is then out of sample) "
                             "or on every part (realised figures are then flagged in-sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", help="chunk parts directory (default OUTPUT.parts)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (the router's own too)")
    parser.add_argument("--allow-unknown-provenance", action="store_true",
                        help="report realised figures for a router that keeps no record of "
                             "its fitting data (they may be in-sample)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="capsat", description="Route instructions to LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, argparse.ArgumentParser] = {}

    def command(name, **kwargs) -> argparse.ArgumentParser:
        commands[name] = sub.add_parser(name, **kwargs)
        return commands[name]

    ev = command("eval", help="compare routers on one data set and split")
    ev.add_argument("--data", required=True,
                    help="mmlu_pro, llmrouter, routerbench, or a path to your own outcome file")
    ev.add_argument("--split", default="query", choices=list(SPLIT_KINDS))
    ev.add_argument("--routers", default="all",
                    help="comma-separated registry names (or NAME:PATH for a saved router); "
                         "'all' for every router capsat eval fits")
    ev.add_argument("--router-args", action="append", metavar="NAME.OPTION=VALUE[,...]",
                    help="router options, e.g. knn.k=50 (repeatable; `capsat ls routers -v` "
                         "lists them)")
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
    ev.add_argument("--allow-unknown-provenance", action="store_true",
                    help=UNKNOWN_PROVENANCE_HELP)
    _add_load_options(ev)
    ev.set_defaults(func=cmd_eval)

    ls = command("ls", help="list routers, data sets and metrics")
    ls.add_argument("what", nargs="?", default="all", choices=["all", "routers", "data",
                                                                 "metrics"])
    ls.add_argument("-v", "--verbose", action="store_true", help="show router options")
    ls.set_defaults(func=cmd_ls)

    va = command("validate", help="check an outcome file (CSV, JSONL, Parquet) and summarise "
                                  "it")
    va.add_argument("path")
    _add_load_options(va)
    va.set_defaults(func=cmd_validate)

    tr = command("train", help="train a CapSAT router (wraps accelerate launch); further "
                               "--field-name VALUE pairs override the recipe",
                 epilog=None, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--config", required=True, help="YAML recipe, e.g. "
                                                    "train/recipes/cpu_default.yaml")
    tr.add_argument("--accelerate-config", default="cpu",
                    help=f"shipped ({', '.join(ACCELERATE_CONFIGS)}) or a path")
    tr.add_argument("--num-processes", type=int, help="override the config's process count")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    tr.set_defaults(func=cmd_train, passes_rest=True)

    on = command("onboard", help="add a model to a CapSAT router from its aptitude-test "
                                 "results alone (no retraining)")
    on.add_argument("--router", required=True, help="a router that onboards (capsat, "
                                                    "aptitude_prior, knn_aptitude): a folder, "
                                                    "'default' or a hub id")
    on.add_argument("--out", help="folder to write the router with the new candidate to "
                                  "(required unless --router is a folder of yours, which is "
                                  "then updated in place, atomically)")
    on.add_argument("--name", required=True, help="the new candidate's name")
    on.add_argument("--aptitude", required=True,
                    help="JSON file: core item id -> the model's score on it (its answers to "
                         "`capsat aptitude export`'s items); task -> accuracy is accepted with "
                         "a warning (the weaker input)")
    on.add_argument("--price", help='JSON object, e.g. {"input_price": 0.2, "output_price": 0.2}')
    on.add_argument("--replace", action="store_true", help="update an existing candidate")
    on.set_defaults(func=cmd_onboard)

    ex = command("explain", help="write a CapSAT router's IRT parameters: model abilities, "
                                 "query difficulty and discrimination")
    ex.add_argument("--router", required=True)
    ex.add_argument("--data", required=True)
    ex.add_argument("--split", default="query", choices=list(SPLIT_KINDS))
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--max-queries", type=int, default=500,
                    help="explain a seeded sample of this many test queries (0 = all)")
    ex.add_argument("--out", required=True)
    ex.add_argument("--allow-unknown-provenance", action="store_true",
                    help=UNKNOWN_PROVENANCE_HELP)
    ex.set_defaults(func=cmd_explain)

    ro = command("route", help="route every instruction of a log (JSONL, CSV, Parquet): "
                               "streaming, resumable, cost-aware; runs under accelerate launch "
                               "to scale out")
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

    fr = command("frontier", help="sweep a policy's knob over a (labelled) log and plot "
                                  "accuracy against cost, single models as points")
    _add_log_options(fr)
    fr.add_argument("--policy", required=True, choices=["tradeoff", "threshold", "budget"])
    fr.add_argument("--points", type=int, default=25, help="knob values swept")
    fr.add_argument("--out", required=True, help="directory for frontier.json and "
                                                 "frontier.png")
    fr.set_defaults(func=cmd_frontier)

    from .serving.config import ServeConfig, add_arguments

    se = command("serve", help="an OpenAI-compatible server that routes each chat request to "
                               "the best candidate backend (FastAPI + uvicorn)")
    add_arguments(se, ServeConfig, required=("router", "backends"))
    se.set_defaults(func=cmd_serve)

    from .serving.calibrate import CalibrateConfig

    ca = command("calibrate", help="choose a threshold or trade-off that meets a target share "
                                   "or cost on validation rows; report it on test rows")
    add_arguments(ca, CalibrateConfig, required=("router", "data"))
    ca.set_defaults(func=cmd_calibrate)

    ap = command("aptitude", help="the aptitude test a new model takes to be onboarded: "
                                  "export its items, or run them against an endpoint")
    ap_sub = ap.add_subparsers(dest="subcommand", required=True)
    commands["aptitude run"] = ar = ap_sub.add_parser(
        "run", help="ask an OpenAI-compatible endpoint the router's aptitude items, grade the "
                    "replies (resumable) and onboard the model into a copy of the router")
    ar.add_argument("--router", required=True, help="CapSAT router: a folder, 'default' or a "
                                                    "hub id")
    ar.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8001/v1")
    ar.add_argument("--model", required=True, help="the endpoint's model name")
    ar.add_argument("--out", required=True, help="folder for replies.jsonl, aptitude.json, "
                                                 "summary.json and the onboarded router")
    ar.add_argument("--name", help="candidate name in the router (default: --model)")
    ar.add_argument("--api-key-env", help="environment variable holding the endpoint's key")
    ar.add_argument("--items", help="aptitude items JSONL (default: the router folder's "
                                    "aptitude_items.jsonl)")
    ar.add_argument("--items-per-task", type=int, help="ask only the first N items of each task")
    ar.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ar.add_argument("--max-tokens", type=int, default=16, help="reply length limit")
    ar.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ar.add_argument("--price", help='JSON object, e.g. {"input_price": 0.2, "output_price": 0.2}')
    ar.add_argument("--replace", action="store_true", help="update an existing candidate")
    ar.set_defaults(func=cmd_aptitude_run)
    commands["aptitude export"] = export = ap_sub.add_parser(
        "export", help="write a router's aptitude items (id, task, question, choices, "
                       "reference answer, grading rule) as JSONL, for a model to take")
    export.add_argument("router", help="a CapSAT router: a folder, 'default' or a hub id")
    export.add_argument("out", help="the JSONL file to write")
    export.set_defaults(func=cmd_aptitude_export)

    pu = command("push", help="upload a saved router folder to the Hugging Face Hub")
    pu.add_argument("router_dir")
    pu.add_argument("repo_id", help="owner/name")
    pu.add_argument("--private", action="store_true")
    pu.add_argument("--token-env", help="environment variable holding the hub token (default: "
                                        "huggingface_hub's own lookup)")
    pu.set_defaults(func=cmd_push)

    pl = command("pull", help="download a router from the Hugging Face Hub into a folder")
    pl.add_argument("repo_id", help="owner/name")
    pl.add_argument("out_dir")
    pl.add_argument("--revision")
    pl.add_argument("--token-env", help="environment variable holding the hub token")
    pl.set_defaults(func=cmd_pull)
    return parser, commands


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the flag as the user types it (``fit_data`` -> ``--fit-data``)."""
    return {action.dest: max(action.option_strings, key=len)
            for action in parser._actions if action.option_strings}


def describe(err: Exception, flags: dict[str, str]) -> str:
    """One line for a user-input error, naming the flag the user typed where there is one."""
    if isinstance(err, DataError):
        return str(err) if err.field is None else _with_field(err, flags.get(err.field,
                                                                              err.field))
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)


def _with_field(err: DataError, field: str) -> str:
    where = [str(err.file)] if err.file is not None else []
    if err.line is not None:
        where.append(f"line {err.line}")
    where.append(field if field.startswith("--") else f"field {field!r}")
    return f"{', '.join(where)}: {err.reason}"


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and any(a in ("-h", "--help") for a in argv[1:]):
        commands["train"].epilog = train_fields_help()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passes_rest", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args, rest) if getattr(args, "passes_rest", False) else args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as err:  # DataError is a ValueError
        if os.environ.get("CAPSAT_DEBUG"):
            raise
        name = " ".join(filter(None, (args.command, getattr(args, "subcommand", None))))
        print(f"capsat {name}: error: {describe(err, flag_names(commands[name]))}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
