"""The batch routing job: stream a log in chunks, score each chunk, merge in order.

Work directory (default ``OUTPUT.parts/``, beside the output):

- ``job.json``: what the parts were made from (input file, fields, chunk size, router,
  candidates); ``--resume`` refuses parts made from anything else;
- ``router/``: the router fitted by this job (so a resume, and every process, uses the same);
- ``chunk-NNNNNNNN.errors.jsonl`` then ``chunk-NNNNNNNN.parquet``: one chunk's rejected rows,
  then its routed rows (line, id, instruction length, P per candidate, labels). Each is
  written to a temporary name and published with ``os.replace``; the Parquet part is published
  last, so a chunk counts as done only when all of it is on disk. A SIGKILL leaves at most a
  temporary file, which nothing reads.

Chunk k holds records [k * chunk_size, (k + 1) * chunk_size). Process p of N scores the chunks
with k % N == p (``accelerate launch`` or ``--shard p/N``); every process reads the whole
file but parses only its own chunks. The merge (the main process, after a barrier, or
``--merge-only``) applies the policy and streams the parts in chunk order into the output, so
the output does not depend on how many processes made the parts. Probabilities are stored, not
choices: the budget policy needs every row's probabilities (a dual price found by bisection,
one streaming pass over the parts per step), and ``capsat frontier`` sweeps policies over the
same parts.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from data_builders.atomic import atomic_open, write_text
from data_builders.errors import DataError
from data_builders.outcomes import MAX_QUERY_CHARS

from ..routers import Queries, Router
from ..routers.base import help_field
from . import prices as P
from .io import (
    COST_PREFIX,
    FORMATS,
    PROB_PREFIX,
    SCORE_PREFIX,
    BadRow,
    OutputWriter,
    Row,
    RowSpec,
    count_records,
    detect_format,
    iter_raw,
    parse_row,
    write_parquet_atomic,
)
from .policies import Policy, choose, solve_budget
from .resolve import Resolved, resolve_router
from .summary import JobSummary, Totals

MANIFEST = "job.json"
ROUTER_DIR = "router"
PRICES_FILE = "prices.json"
FORMAT_VERSION = 2  # 2: chunks count task labels


@dataclass
class RouteConfig:
    """Everything ``capsat route`` needs; fields carry their help text."""

    router: str = help_field("", "saved router directory, classic router name (fitted on "
                                 "--fit-data) or CapSAT hub id")
    input: str = help_field("", "the log: JSONL, CSV or Parquet (JSONL/CSV may be .gz)")
    output: str = help_field("", "routed rows, one per good input row, in input order")
    candidates: list | None = help_field(None, "candidate models (default: all the router "
                                               "knows)")
    policy: str = help_field("max-accuracy", "max-accuracy | tradeoff:LAMBDA | threshold:T | "
                                             "budget:B")
    field: str = help_field("instruction", "field holding the instruction (text, or chat "
                                           "messages: the last user turn is routed)")
    id_field: str | None = help_field(None, "field holding a row id (default: the line number)")
    task_field: str | None = help_field(None, "field holding the row's task label: a task the "
                                              "router knows sharpens its routing; a row "
                                              "without one, or with another, is routed from "
                                              "its text (the summary counts both)")
    chat: bool = help_field(False, "CSV only: the field holds JSON-encoded chat messages")
    max_chars: int = help_field(MAX_QUERY_CHARS, "longer instructions are rejected (too_long)")
    input_format: str | None = help_field(None, "jsonl | csv | parquet (default: from the "
                                                "name)")
    output_format: str | None = help_field(None, "jsonl | csv | parquet (default: the "
                                                 "input's)")
    chunk_size: int = help_field(10_000, "rows per chunk (the unit of resume and of "
                                         "scale-out)")
    resume: bool = help_field(False, "keep the finished chunks of an interrupted run")
    strict: bool = help_field(False, "stop at the first bad row (DataError with file, line, "
                                      "field)")
    prices: str | None = help_field(None, "JSON file (model -> cost per call, or "
                                          "{input_price, output_price} per million tokens), or "
                                          "a data set / outcome file (mean cost per call)")
    output_tokens: int = help_field(256, "assumed answer length in tokens, for token prices")
    fit_data: str | None = help_field(None, "data set name or outcome file to fit a named "
                                            "router on")
    fit_part: str = help_field("train", "train | all: fit on the train part of the query "
                                        "split by --seed (a log from the test part is then out "
                                        "of sample), or on every part (realised figures on "
                                        "that part are in-sample and flagged)")
    seed: int = help_field(0, "seed of the query split used for fitting")
    work_dir: str | None = help_field(None, "where the chunk parts go (default OUTPUT.parts)")
    shard: str | None = help_field(None, "i/N: score only chunks k with k % N == i and stop "
                                         "(several machines; then --merge-only)")
    merge_only: bool = help_field(False, "merge finished parts into the output (after "
                                         "--shard runs)")
    keep_parts: bool = help_field(False, "keep the work directory after a successful merge")
    save_router: str | None = help_field(None, "also save the fitted router to this "
                                               "directory")
    progress: bool = help_field(True, "show a progress bar")
    allow_unknown_provenance: bool = help_field(
        False, "report realised figures for a router that has no record of what it was "
               "fitted on (they may be in-sample)")


# ------------------------------------------------------------------ processes
@dataclass
class Processes:
    rank: int
    world: int
    distributed: bool  # launched by accelerate / torchrun: barriers are real

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            self._state.wait_for_everyone()

    @classmethod
    def detect(cls, shard: str | None) -> "Processes":
        if shard is not None:
            try:
                index, count = (int(x) for x in shard.split("/"))
            except ValueError:
                raise DataError(f"--shard must be i/N, e.g. 0/4; got {shard!r}",
                                field="shard") from None
            if not 0 <= index < count:
                raise DataError(f"--shard {shard}: need 0 <= i < N", field="shard")
            return cls(index, count, False)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # accelerate launch / torchrun
            import torch
            from accelerate import PartialState

            state = PartialState(cpu=not torch.cuda.is_available())
            procs = cls(state.process_index, state.num_processes, True)
            procs._state = state
            return procs
        return cls(0, 1, False)


# ------------------------------------------------------------------ paths
def chunk_name(index: int) -> str:
    return f"chunk-{index:08d}"


def work_dir_of(config: RouteConfig) -> Path:
    return Path(config.work_dir) if config.work_dir else Path(config.output + ".parts")


def errors_path_of(output: str) -> Path:
    return Path(output + ".errors.jsonl")


def summary_path_of(output: str) -> Path:
    return Path(output + ".summary.json")


def _fingerprint(config: RouteConfig, fmt: str) -> dict:
    stat = Path(config.input).stat()
    return {"format_version": FORMAT_VERSION, "input": str(Path(config.input).resolve()),
            "input_bytes": stat.st_size, "input_mtime_ns": stat.st_mtime_ns,
            "input_format": fmt, "field": config.field, "id_field": config.id_field,
            "task_field": config.task_field,
            "chat": config.chat, "max_chars": config.max_chars, "chunk_size": config.chunk_size,
            "router": config.router, "candidates": config.candidates,
            "fit_data": config.fit_data, "fit_part": config.fit_part, "seed": config.seed}


def _check_config(config: RouteConfig) -> None:
    if not config.input or not config.output or (not config.router and not config.merge_only):
        raise DataError("route needs --router, --input and --output", field="router")
    if not Path(config.input).is_file():
        raise DataError("no such input file", file=config.input)
    if config.chunk_size < 1:
        raise DataError("chunk_size must be >= 1", field="chunk_size")
    if config.max_chars < 1:
        raise DataError("max_chars must be >= 1", field="max_chars")
    if config.output_format is not None and config.output_format not in FORMATS:
        raise DataError(f"unknown output format {config.output_format!r}; known: {FORMATS}",
                        field="output_format")
    if Path(config.output).resolve() == Path(config.input).resolve():
        raise DataError("the output would overwrite the input", file=config.output)
    Policy.parse(config.policy)  # before anything is fitted, embedded or written


# ------------------------------------------------------------------ set-up
def _prepare_work_dir(work: Path, fingerprint: dict, resume: bool, shard: bool) -> None:
    """Main process: a fresh work directory, or (resume / shard) one whose parts match."""
    manifest = work / MANIFEST
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if resume or shard:
            changed = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
            if changed:
                raise DataError(f"the parts in {work} were made from something else "
                                f"({changed}); remove the directory to start over",
                                file=str(manifest), field=sorted(changed)[0])
            return
        shutil.rmtree(work)
    elif work.exists() and any(work.iterdir()):
        raise DataError("the work directory exists and is not a routing job's; remove it or "
                        "pass --work-dir", file=str(work))
    work.mkdir(parents=True, exist_ok=True)
    write_text(manifest, json.dumps(fingerprint, indent=2))


def _resolve(config: RouteConfig, work: Path, procs: Processes) -> tuple[Router, dict]:
    """The router (fitted once, by the main process, and saved in the work directory)."""
    saved = work / ROUTER_DIR
    info: dict = {"spec": config.router}
    if config.shard is not None:
        # Shards share no barrier: each loads the same saved router itself.
        if not Path(config.router).is_dir() and "/" not in config.router:
            raise DataError("with --shard, pass a saved router directory (fit it once with "
                            "--save-router) so every shard routes with the same router",
                            field="router")
        resolved = resolve_router(config.router)
        info.update({"kind": resolved.kind, "name": resolved.router.name,
                     "provenance": provenance_info(resolved.router)})
        write_text(work / "router_info.json", json.dumps(info))
        return resolved.router, info
    if procs.is_main:
        if (saved / "router.json").exists():  # a resumed job keeps its fitted router
            router = Router.load(saved)
            info.update(json.loads((work / "router_info.json").read_text()))
        else:
            resolved: Resolved = resolve_router(config.router, fit_data=config.fit_data,
                                                fit_part=config.fit_part, seed=config.seed,
                                                candidates=config.candidates,
                                                progress=config.progress)
            router = resolved.router
            info.update({"kind": resolved.kind, "name": router.name,
                         "provenance": provenance_info(router)})
            if resolved.kind == "fitted":
                table = resolved.fit_table
                info["fit"] = resolved.fit_info
                router.save(saved)
                table_prices = P.from_table(table, router.models, config.output_tokens)
                if table_prices is not None:
                    write_text(work / PRICES_FILE, json.dumps(table_prices.to_json()))
            write_text(work / "router_info.json", json.dumps(info))
        if config.save_router and info.get("kind") == "fitted":
            router.save(config.save_router)
    procs.barrier()
    if not procs.is_main:
        info.update(json.loads((work / "router_info.json").read_text()))
        router = Router.load(saved) if info.get("kind") == "fitted" else \
            resolve_router(config.router).router
    return router, info


def provenance_info(router: Router) -> dict | None:
    """What the summary says of the router's fitting data (None: it keeps no record)."""
    record = router.fitted_on
    if record is None:
        return None
    return {"data": record.data, "split": record.split, "seed": record.seed,
            "parts": record.parts, "queries": len(record.query_ids),
            "model_accuracy": record.model_accuracy}


def _candidates(config: RouteConfig, router: Router) -> list[str]:
    if not config.candidates:
        return list(router.models)
    unknown = [m for m in config.candidates if m not in router.models]
    if unknown:
        raise DataError(f"unknown candidate(s) {unknown}; the router knows {router.models}",
                        field="candidates")
    if len(set(config.candidates)) != len(config.candidates):
        raise DataError(f"candidate list has duplicates: {config.candidates}",
                        field="candidates")
    return list(config.candidates)


def resolve_prices(config: RouteConfig, router: Router | None, models: Sequence[str],
                   work: Path) -> P.Prices | None:
    """``--prices`` (file or data), else the router's registry, else the fitting data."""
    if config.prices:
        path = Path(config.prices)
        if path.suffix.lower() == ".json" and path.is_file():
            return P.from_file(config.prices, models, config.output_tokens)
        from data_builders.sources import load_outcomes

        table_prices = P.from_table(load_outcomes(config.prices), models, config.output_tokens)
        if table_prices is None:
            raise DataError("this data has neither costs nor model-card prices",
                            file=config.prices, field="prices")
        return table_prices
    if router is not None:
        found = P.from_router(router, models, config.output_tokens)
        if found is not None:
            return found
    saved = work / PRICES_FILE
    if saved.exists():
        values = json.loads(saved.read_text())
        return P.Prices.from_json(values, models)
    return None


# ------------------------------------------------------------------ scoring
def _chunks(path: str, fmt: str, chunk_size: int, columns: Sequence[str] | None
            ) -> Iterator[tuple[int, list[tuple[int, object]]]]:
    """(chunk index, [(line, raw), ...]) for every chunk of the file, in order."""
    current, rows = 0, []
    for ordinal, line, raw in iter_raw(path, fmt, columns):
        index = ordinal // chunk_size
        if index != current:
            yield current, rows
            current, rows = index, []
        rows.append((line, raw))
    if rows:
        yield current, rows


def _seen(rows: list[Row], router: Router) -> np.ndarray:
    """Per row, whether the router was fitted on its text (normalised; a log's ids are its
    own, so they are not compared with the fitting data's)."""
    record = router.fitted_on
    seen = np.zeros(len(rows), dtype=bool)
    if record is not None and rows:
        seen[record.overlap(None, [r.text for r in rows])] = True
    return seen


def _score_chunk(rows: list[Row], router: Router, models: Sequence[str]) -> np.ndarray:
    """P per (row, candidate); each distinct (text, task) is scored once (logs repeat
    instructions, and every router scores a query independently of its batch)."""
    if not rows:
        return np.zeros((0, len(models)))
    index: dict[tuple[str, str | None], int] = {}
    inverse = np.array([index.setdefault((r.text, r.task), len(index)) for r in rows])
    keys = list(index)
    tasks = [task for _, task in keys]
    queries = Queries([text for text, _ in keys],
                      tasks=tasks if any(t is not None for t in tasks) else None)
    probs = router.predict_proba(queries, list(models))
    return np.asarray(probs, dtype=np.float64)[inverse]


def _write_chunk(work: Path, index: int, rows: list[Row], bad: list[BadRow], probs: np.ndarray,
                 seen: np.ndarray, models: Sequence[str], has_ids: bool, rows_in: int,
                 known_tasks: frozenset[str]) -> None:
    name = chunk_name(index)
    write_text(work / f"{name}.errors.jsonl",
                      "".join(json.dumps(b.to_json(), ensure_ascii=False) + "\n" for b in bad))
    columns = {"line": pa.array([r.line for r in rows], pa.int64())}
    if has_ids:
        columns["id"] = pa.array([r.id for r in rows], pa.string())
    columns["chars"] = pa.array([len(r.text) for r in rows], pa.int64())
    columns["had_system"] = pa.array([r.had_system for r in rows], pa.bool_())
    columns["had_earlier_turns"] = pa.array([r.had_earlier_turns for r in rows], pa.bool_())
    columns["seen"] = pa.array(seen, pa.bool_())
    columns["has_task"] = pa.array([r.task is not None for r in rows], pa.bool_())
    columns["unknown_task"] = pa.array([r.task is not None and r.task not in known_tasks
                                        for r in rows], pa.bool_())
    for j, m in enumerate(models):
        columns[PROB_PREFIX + m] = pa.array(probs[:, j], pa.float64())
    for m in models:
        columns[SCORE_PREFIX + m] = pa.array([r.scores.get(m, np.nan) for r in rows],
                                             pa.float64())
        columns[COST_PREFIX + m] = pa.array([r.costs.get(m, np.nan) for r in rows],
                                            pa.float64())
    table = pa.table(columns).replace_schema_metadata(
        {b"capsat_chunk": json.dumps({"rows_in": rows_in, "rejected": len(bad)}).encode()})
    write_parquet_atomic(work / f"{name}.parquet", table)


def score_parts(config: RouteConfig, router: Router, models: Sequence[str], work: Path,
                procs: Processes, fmt: str) -> int:
    """Score this process's unfinished chunks; returns the number of records in the file."""
    spec = RowSpec(config.field, config.id_field, config.max_chars, config.chat, tuple(models),
                   config.task_field)
    known_tasks = frozenset(router.task_labels() or ())
    columns = [config.field] + [f for f in (config.id_field, config.task_field) if f] + [
        prefix + m for m in models for prefix in (SCORE_PREFIX, COST_PREFIX)]
    total = count_records(config.input, fmt) if config.progress else None
    bar = tqdm(total=total, unit="row", desc=f"route [{procs.rank}/{procs.world}]",
               disable=not config.progress, position=procs.rank, dynamic_ncols=True)
    records = 0
    for index, raw_rows in _chunks(config.input, fmt, config.chunk_size, columns):
        records += len(raw_rows)
        mine = index % procs.world == procs.rank
        if mine and not (work / f"{chunk_name(index)}.parquet").exists():
            rows, bad = [], []
            for line, raw in raw_rows:
                parsed = parse_row(raw, line, spec)
                if isinstance(parsed, BadRow):
                    if config.strict:
                        raise parsed.error(config.input)
                    bad.append(parsed)
                else:
                    rows.append(parsed)
            probs = _score_chunk(rows, router, models)
            _write_chunk(work, index, rows, bad, probs, _seen(rows, router), models,
                         config.id_field is not None, len(raw_rows), known_tasks)
        bar.update(len(raw_rows))
    bar.close()
    return records


# ------------------------------------------------------------------ merging
@dataclass
class Part:
    lines: np.ndarray
    ids: list[str] | None
    chars: np.ndarray
    probs: np.ndarray
    scores: np.ndarray
    real_costs: np.ndarray
    flags: dict[str, int]
    rows_in: int
    seen: np.ndarray | None = None  # rows the router was fitted on


def read_part(path: Path, models: Sequence[str], has_ids: bool,
              probs_only: bool = False) -> Part:
    wanted = ["chars"] + [PROB_PREFIX + m for m in models]
    if not probs_only:
        wanted = (["line"] + (["id"] if has_ids else []) + wanted
                  + ["had_system", "had_earlier_turns", "seen", "has_task", "unknown_task"]
                  + [SCORE_PREFIX + m for m in models] + [COST_PREFIX + m for m in models])
    table = pq.read_table(path, columns=wanted)
    meta = json.loads(table.schema.metadata[b"capsat_chunk"])

    def matrix(prefix):
        return np.column_stack([table[prefix + m].to_numpy(zero_copy_only=False)
                                for m in models]).reshape(len(table), len(models))

    probs = matrix(PROB_PREFIX)
    chars = table["chars"].to_numpy()
    if probs_only:
        return Part(np.zeros(0), None, chars, probs, np.zeros(0), np.zeros(0), {}, 0)
    return Part(table["line"].to_numpy(), table["id"].to_pylist() if has_ids else None, chars,
                probs, matrix(SCORE_PREFIX), matrix(COST_PREFIX),
                {"had_system": int(table["had_system"].to_numpy().sum()),
                 "had_earlier_turns": int(table["had_earlier_turns"].to_numpy().sum()),
                 "has_task": int(table["has_task"].to_numpy().sum()),
                 "unknown_task": int(table["unknown_task"].to_numpy().sum())},
                int(meta["rows_in"]), table["seen"].to_numpy(zero_copy_only=False))


def part_paths(work: Path, n_chunks: int) -> list[Path]:
    paths = [work / f"{chunk_name(k)}.parquet" for k in range(n_chunks)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{len(missing)} of {n_chunks} chunks are not finished (e.g. "
                        f"{missing[:3]}); run again with --resume (or finish every --shard)",
                        file=str(work))
    return paths


def budget_dual_price(paths: Sequence[Path], models: Sequence[str], prices: P.Prices,
                      budget: float):
    """Solve the budget policy's dual price with one streaming pass over the parts per step."""
    spread = float(np.ptp(prices.matrix(np.array([400.0]))[0])) or 1.0

    def spend_at(lam: float) -> float:
        total = 0.0
        for path in paths:
            part = read_part(path, models, False, probs_only=True)
            costs = prices.matrix(part.chars)
            picked = np.argmax(part.probs - lam * costs, axis=1)
            total += float(costs[np.arange(len(picked)), picked].sum())
        return total

    return solve_budget(spend_at, budget, spread)


def evaluate_parts(paths: Sequence[Path], models: Sequence[str], policy: Policy,
                   prices: P.Prices | None, has_ids: bool, writer: OutputWriter | None = None,
                   lam: float | None = None) -> tuple[Totals, int]:
    """Apply ``policy`` to every part in order; totals (and the output rows via ``writer``)."""
    totals = Totals(list(models), prices is not None)
    rows_in = 0
    for path in paths:
        part = read_part(path, models, has_ids)
        rows_in += part.rows_in
        costs = None if prices is None else prices.matrix(part.chars)
        choice = choose(policy, part.probs, costs, lam)
        totals.add(choice, part.probs, costs, part.scores, part.real_costs, part.flags,
                   part.seen)
        if writer is not None:
            chosen_cost = None if costs is None else costs[np.arange(len(choice)), choice]
            writer.write(part.lines, part.ids, choice, part.probs, chosen_cost)
    return totals, rows_in


def merge_errors(work: Path, n_chunks: int, target: Path) -> Counter:
    """Concatenate the chunks' error files in order into ``target`` (atomically)."""
    reasons: Counter = Counter()
    with atomic_open(target) as out:
        for k in range(n_chunks):
            with open(work / f"{chunk_name(k)}.errors.jsonl", encoding="utf-8") as fh:
                for line in fh:
                    reasons[json.loads(line)["reason"]] += 1
                    out.write(line)
    return reasons


def best_single(info: dict, models: Sequence[str]) -> tuple[str | None, str]:
    """The reference of every route summary: the candidate with the best accuracy on the
    router's fitting data (its record), whatever kind of router it is."""
    record = info.get("provenance")
    if record is None:
        return None, "no reference: the router keeps no record of its fitting data"
    known = [m for m in models if m in record["model_accuracy"]]
    if not known:
        return None, "no reference: the router's record has no accuracy for these candidates"
    best = max(known, key=lambda m: record["model_accuracy"][m])
    return best, (f"best accuracy on the router's fitting data ({record['data']}, "
                  f"{'/'.join(record['parts'])})")


def merge(config: RouteConfig, models: Sequence[str], work: Path, n_chunks: int,
          prices: P.Prices | None, info: dict, fmt: str) -> JobSummary:
    policy = Policy.parse(config.policy)
    if policy.needs_costs and prices is None:
        raise DataError(f"policy {policy} needs prices: give --prices FILE or DATA (or fit on "
                        f"data that has costs or model-card prices)", field="prices")
    paths = part_paths(work, n_chunks)
    started = time.perf_counter()
    budget = lam = None
    if policy.kind == "budget":
        solution = budget_dual_price(paths, models, prices, policy.value)
        budget, lam = solution.to_json(), solution.lam
    out_fmt = config.output_format or fmt
    writer = OutputWriter(Path(config.output), out_fmt, models, config.id_field is not None,
                          prices is not None)
    try:
        totals, rows_in = evaluate_parts(paths, models, policy, prices,
                                         config.id_field is not None, writer, lam)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    reasons = merge_errors(work, n_chunks, errors_path_of(config.output))
    best, why = best_single(info, models)
    summary = JobSummary(config.input, config.output, str(errors_path_of(config.output)),
                         str(policy), rows_in, totals, reasons, best, why,
                         None if prices is None else prices.to_json(), budget, info,
                         realised_status=realised_status(info, totals, config),
                         task_field=config.task_field)
    summary.timing["merge_seconds"] = round(time.perf_counter() - started, 3)
    return summary


def realised_status(info: dict, totals: Totals, config: RouteConfig) -> dict:
    """Whether the realised figures may be read as out of sample, and why not."""
    fit = info.get("fit") or {}
    status = {"fit_part": fit.get("fit_part"), "labelled_rows_seen_in_fitting": totals.seen,
              "provenance_known": info.get("provenance") is not None, "withheld": False,
              "warning": None}
    if info.get("provenance") is None:
        if config.allow_unknown_provenance:
            status["warning"] = ("the router keeps no record of its fitting data: these rows "
                                 "may be in-sample")
        else:
            status["withheld"] = True
            status["warning"] = ("withheld: the router keeps no record of its fitting data, "
                                 "so these rows may be in-sample (pass "
                                 "--allow-unknown-provenance to report them)")
    elif totals.seen:
        status["warning"] = (f"IN-SAMPLE: the router was fitted on {totals.seen} of these "
                             f"{totals.labelled} labelled rows"
                             + (" (--fit-part all)" if fit.get("fit_part") == "all" else ""))
    elif fit.get("fit_part") == "all":
        status["warning"] = ("fitted on every part of the data (--fit-part all): realised "
                             "figures on rows of that data are in-sample")
    return status


# ------------------------------------------------------------------ the job
def run_route(config: RouteConfig) -> JobSummary | None:
    """Route a log. Returns the summary on the process that merged (None elsewhere)."""
    _check_config(config)
    started = time.perf_counter()
    fmt = config.input_format or detect_format(config.input)
    if fmt not in FORMATS:
        raise DataError(f"unknown input format {fmt!r}; known: {FORMATS}", field="input_format")
    procs = Processes.detect(config.shard)
    work = work_dir_of(config)
    fingerprint = _fingerprint(config, fmt)
    if config.merge_only:
        return _merge_only(config, work, fingerprint, fmt)
    fresh = not work.exists()
    try:
        if procs.is_main or config.shard is not None:
            _prepare_work_dir(work, fingerprint, config.resume, config.shard is not None)
        procs.barrier()
        router, info = _resolve(config, work, procs)
        router.progress = config.progress  # the router's own bars (embedding, scoring) too
        models = _candidates(config, router)
        if config.task_field is not None and router.task_labels() is None:
            raise DataError(f"router {router.name} does not read task labels: drop "
                            f"--task-field", field="task_field")
        # Prices and policy are checked before the long part, not after it.
        prices = resolve_prices(config, router, models, work) if procs.is_main else None
        if procs.is_main and Policy.parse(config.policy).needs_costs and prices is None:
            raise DataError(f"policy {config.policy} needs prices: give --prices FILE or DATA "
                            f"(this router records none)", field="prices")
    except BaseException:
        # A run that fails on its arguments leaves nothing behind.
        if fresh and procs.is_main and config.shard is None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    t_score = time.perf_counter()
    records = score_parts(config, router, models, work, procs, fmt)
    score_seconds = time.perf_counter() - t_score
    procs.barrier()
    if config.shard is not None or not procs.is_main:
        return None
    n_chunks = math.ceil(records / config.chunk_size)
    summary = merge(config, models, work, n_chunks, prices, info, fmt)
    summary.timing.update({"score_seconds": round(score_seconds, 3),
                           "total_seconds": round(time.perf_counter() - started, 3),
                           "processes": procs.world,
                           "rows_per_second": round(records / max(score_seconds, 1e-9), 1)})
    _finish(config, summary, work)
    return summary


def _merge_only(config: RouteConfig, work: Path, fingerprint: dict, fmt: str) -> JobSummary:
    manifest = work / MANIFEST
    if not manifest.exists():
        raise DataError("no routing parts to merge here", file=str(work))
    _prepare_work_dir(work, fingerprint, True, True)
    info = json.loads((work / "router_info.json").read_text())
    saved = work / ROUTER_DIR
    router = Router.load(saved) if info.get("kind") == "fitted" else None
    models = config.candidates or (router.models if router is not None else None)
    if models is None:
        models = [name[len(PROB_PREFIX):] for name in
                  pq.read_schema(work / f"{chunk_name(0)}.parquet").names
                  if name.startswith(PROB_PREFIX)]
    records = sum(1 for _ in iter_raw(config.input, fmt, [config.field]))
    prices = resolve_prices(config, router, models, work)
    summary = merge(config, models, work, math.ceil(records / config.chunk_size), prices,
                    info, fmt)
    _finish(config, summary, work)
    return summary


def _finish(config: RouteConfig, summary: JobSummary, work: Path) -> None:
    write_text(summary_path_of(config.output), json.dumps(summary.to_json(), indent=2) + "\n")
    if not config.keep_parts:
        shutil.rmtree(work)

