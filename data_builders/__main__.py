"""``python -m data_builders``: rebuild shipped data (``build``), write the Model-SAT
training material of one split (``prepare``), or an instruction log with real outcome labels
for `capsat route` (``log``)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .sources import SOURCES, build_source, shipped_path
from .splits import SPLIT_KINDS


def cmd_build(args) -> int:
    names = sorted(SOURCES) if "all" in args.names else args.names
    for name in names:
        table = build_source(name, args.raw)
        path = table.save(shipped_path(name))
        print(f"{name}: {table} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def cmd_prepare(args) -> int:
    from .aptitude import aptitude_items
    from .atomic import atomic_open, write_json
    from .experiment import prepare_experiment

    out = Path(args.out)
    experiment = prepare_experiment(args.data, args.split, models=_csv(args.models),
                                    held_out=_csv(args.held_out), seed=args.seed,
                                    test_size=args.test_size,
                                    validation_size=args.validation_size,
                                    k_per_task=args.k_per_task)
    split, aptitude = experiment.split, experiment.aptitude
    for note in experiment.notes:
        print(f"in: {note}")
    print(f"split: {args.split}, seed {args.seed}: {split.sizes()}")
    print(f"aptitude test: {len(aptitude.item_ids)} core items chosen on the train queries of "
          f"{len(split.train_models)} train models ({args.k_per_task} per task x "
          f"{len(aptitude.tasks)} tasks)")
    items = aptitude_items(experiment.table, aptitude)
    with atomic_open(out / "aptitude_items.jsonl") as fh:
        for item in items:
            fh.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
    written = [write_json(out / "split.json", split.to_json()),
               write_json(out / "aptitude.json", aptitude.to_json()),
               out / "aptitude_items.jsonl",
               write_json(out / "counts.json", {
                   "split": split.sizes(), "core_items": len(aptitude.item_ids),
                   "gradable_items": sum(i.grading != "none" for i in items),
                   "aptitude_results": {m: len(r) for m, r in
                                        experiment.aptitude_results().items()}})]
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_log(args) -> int:
    from .experiment import prepare_experiment
    from .logs import log_rows, write_log
    from .splits import sample_ids

    # The split `capsat eval` and `capsat train` make with the same arguments.
    experiment = prepare_experiment(args.data, "query", models=_csv(args.models),
                                    seed=args.seed, test_size=args.test_size,
                                    validation_size=args.validation_size)
    table, split = experiment.table, experiment.split
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

    ins = sub.add_parser("prepare", help="split a data set, choose the aptitude test's core "
                                         "items and write the split, the test and its items "
                                         "(question, options, reference answer)")
    ins.add_argument("--data", required=True, help="a shipped data set name or an outcome file")
    ins.add_argument("--split", default="query", choices=list(SPLIT_KINDS))
    ins.add_argument("--seed", type=int, default=0, help="seed of the split, the core-item "
                                                         "tie-break and the k-shot groups")
    ins.add_argument("--test-size", type=float, default=0.2)
    ins.add_argument("--validation-size", type=float, default=0.1,
                     help="share of train carved out for hyper-parameters and early stopping")
    ins.add_argument("--models", help="comma-separated candidate pool (default: every model)")
    ins.add_argument("--held-out", help="models (--split model) or tasks (--split task) to "
                                        "hold out; default: a seeded share")
    ins.add_argument("--k-per-task", type=int, default=10, help="core items per task")
    ins.add_argument("--out", required=True, help="output directory")
    ins.set_defaults(func=cmd_prepare)

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
