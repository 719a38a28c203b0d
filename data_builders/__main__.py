"""``python -m data_builders``: rebuild shipped data (``build``), write the Model-SAT
training data of one split (``instructions``), or an instruction log with real outcome labels
for `capsat route` (``log``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .sources import SOURCES, build_source, load_outcomes, shipped_path


def cmd_build(args) -> int:
    names = sorted(SOURCES) if "all" in args.names else args.names
    for name in names:
        table = build_source(name, args.raw)
        path = table.save(shipped_path(name))
        print(f"{name}: {table} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def cmd_instructions(args) -> int:
    from .aptitude import represent_models, select_core_items, task_keywords, write_json
    from .errors import DataError
    from .instructions import (build_instructions, build_kshot_groups, groups_per_model,
                               save_instructions)
    from .splits import make_split

    out = Path(args.out)
    held_out = _csv(args.held_out)
    held = {}
    if held_out:
        if args.split == "query":
            raise DataError("--held-out is for --split model or --split task", field="held_out")
        held = {"held_out_models" if args.split == "model" else "held_out_tasks": held_out}
    table = load_outcomes(args.data)
    print(f"in: {table}")
    models = _csv(args.models)
    if models:
        table = table.subset(models=table.check_models(models))
    # The same table the evaluation harness splits (``capsat eval``), so that the same seed
    # gives the same split there and here.
    complete = table.complete()
    if len(complete) < len(table):
        print(f"in: dropped {len(table) - len(complete)} of {len(table)} queries that lack a "
              f"score for some model")
    table = complete
    split = make_split(table, args.split, test_size=args.test_size,
                       validation_size=args.validation_size, seed=args.seed, **held)
    train, validation, test = split.tables(table)
    print(f"split: {args.split}, seed {args.seed}: {split.sizes()}")

    aptitude = select_core_items(train, args.k_per_task, args.seed)
    aptitude.check_not_in(split.validation, "validation")
    aptitude.check_not_in(split.test, "test")
    keywords = task_keywords(train, n=args.keywords)
    pool = list(dict.fromkeys(split.train_models + split.test_models))
    # Held-out models are described by their core-item scores only: the onboarding setting.
    representations = represent_models(aptitude, table, keywords, models=pool)
    print(f"aptitude test: {len(aptitude.item_ids)} core items from train "
          f"({args.k_per_task} per task x {len(aptitude.tasks)} tasks)")

    written = [write_json(split.to_json(), out / "split.json"),
               write_json(aptitude.to_json(), out / "aptitude.json"),
               write_json(keywords, out / "keywords.json"),
               write_json(representations, out / "representations.json")]
    counts = {"split": split.sizes(), "core_items": len(aptitude.item_ids)}
    for part, part_table in (("train", train), ("validation", validation), ("test", test)):
        ds = build_instructions(part_table, representations, exclude=aptitude)
        cells = int(part_table.scores.notna().to_numpy().sum())
        written.append(save_instructions(ds, out / f"instructions_{part}.parquet"))
        counts[f"instructions_{part}"] = len(ds)
        print(f"out: {part} instructions: {len(ds)} rows from {cells} observed cells "
              f"({cells - len(ds)} core-item cells left out)")
    for part, part_table in (("train", train), ("validation", validation)):
        groups = build_kshot_groups(part_table, representations, args.kshot, args.seed,
                                    exclude=aptitude)
        per_model = groups_per_model(groups)
        written.append(save_instructions(groups, out / f"kshot_{part}.parquet"))
        counts[f"kshot_{part}"] = len(groups)
        counts[f"kshot_{part}_per_model"] = per_model
        low, high = (min(per_model.values()), max(per_model.values())) if per_model else (0, 0)
        print(f"out: {part} k-shot groups (k={args.kshot}): {len(groups)} "
              f"({low} to {high} per model, {len(per_model)} models)")
    written.append(write_json(counts, out / "counts.json"))
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_log(args) -> int:
    from .logs import log_rows, write_log
    from .splits import make_split, sample_ids

    table = load_outcomes(args.data)
    if args.models:
        table = table.subset(models=table.check_models(_csv(args.models)))
    # The split `capsat eval` and `capsat train` make: on queries with a score for every model.
    table = table.complete()
    split = make_split(table, "query", test_size=args.test_size,
                       validation_size=args.validation_size, seed=args.seed)
    ids = sample_ids(list(getattr(split, args.part)), args.n, args.seed)
    path = write_log(log_rows(table, ids), args.out)
    print(f"wrote {path}: {len(ids)} instructions from the {args.part} part of the {table.name} "
          f"query split (seed {args.seed}), labels for {len(table.models)} models")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_builders", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build shipped Parquet from the raw source files")
    build.add_argument("names", nargs="+", choices=sorted(SOURCES) + ["all"])
    build.add_argument("--raw", required=True, help="directory holding the raw sources, "
                                                    "e.g. ../shared/data")
    build.set_defaults(func=cmd_build)

    ins = sub.add_parser("instructions", help="split a data set, choose the aptitude test's "
                                              "core items and write capability instructions")
    ins.add_argument("--data", required=True, help="a shipped data set name or an outcome file")
    ins.add_argument("--split", default="query", choices=["query", "model", "task"])
    ins.add_argument("--seed", type=int, default=0, help="seed of the split, the core-item "
                                                         "tie-break and the k-shot groups")
    ins.add_argument("--test-size", type=float, default=0.2)
    ins.add_argument("--validation-size", type=float, default=0.1,
                     help="share of train carved out for hyper-parameters and early stopping")
    ins.add_argument("--models", help="comma-separated candidate pool (default: every model)")
    ins.add_argument("--held-out", help="models (--split model) or tasks (--split task) to "
                                        "hold out; default: a seeded share")
    ins.add_argument("--k-per-task", type=int, default=10, help="core items per task")
    ins.add_argument("--keywords", type=int, default=5, help="keywords per task description")
    ins.add_argument("--kshot", type=int, default=4,
                     help="instructions per k-shot group (one right, k-1 wrong)")
    ins.add_argument("--out", required=True, help="output directory")
    ins.set_defaults(func=cmd_instructions)

    log = sub.add_parser("log", help="write a JSONL instruction log (with the real outcomes as "
                                     "score|MODEL labels) from one part of a query split")
    log.add_argument("--data", required=True, help="a shipped data set name or an outcome file")
    log.add_argument("--part", default="test", choices=["train", "validation", "test"])
    log.add_argument("--seed", type=int, default=0, help="seed of the split and the sample")
    log.add_argument("--test-size", type=float, default=0.2)
    log.add_argument("--validation-size", type=float, default=0.1)
    log.add_argument("--models", help="comma-separated candidate pool (default: every model)")
    log.add_argument("--n", type=int, default=200, help="instructions to sample")
    log.add_argument("--out", required=True, help="output .jsonl")
    log.set_defaults(func=cmd_log)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
