"""Batch routing at scale: a 1,000,000-line JSONL log routed by the kNN router.

The log is built from the shipped MMLU-Pro questions (seeded uniform draws, so instructions
repeat; every 10th line carries the real outcome labels). The log draws only from the test
part of the query split (seed 0) and the kNN router is fitted on the train part of mmlu_pro
(the five small open models), so the realised accuracy is out of sample; the router is saved; ``capsat route`` then runs as a child
process while this script samples its RSS, so memory is reported along the way (at 10%,
50%, 100% of the chunks) and as the exact peak (getrusage of the child). A smaller log
measures the speed-up of ``accelerate launch --num_processes 2`` over one process.

    python bench/route_log.py [--lines 1000000] [--small-lines 100000]

Writes bench/results/route_log.json and a section of bench/results/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from results_readme import replace_section

from data_builders.atomic import atomic_open, write_json

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
MODELS = ["Meta-Llama-3_1-8B-Instruct", "Phi-3-mini-4k-instruct", "mathstral-7B", "gemma-7b",
          "Qwen1.5-7B-Chat"]


TITLE = "Batch routing: 1M-line log (kNN)"


def build_log(path: Path, lines: int, seed: int = 0) -> None:
    from data_builders.experiment import prepare_experiment

    experiment = prepare_experiment("mmlu_pro", models=MODELS, seed=0)  # as route fits
    table = experiment.table.subset(list(experiment.split.test))
    ids, texts = table.query_ids, table.texts
    scores = table.scores.to_numpy(dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(ids), size=lines)
    with atomic_open(path) as fh:
        for i, q in enumerate(draws):
            row = {"id": f"{ids[q]}@{i}", "instruction": texts[q]}
            if i % 10 == 0:
                row.update({f"score|{m}": scores[q, j] for j, m in enumerate(MODELS)
                            if not np.isnan(scores[q, j])})
            fh.write(json.dumps(row) + "\n")


def run_sampled(command: list[str], parts_dir: Path, n_chunks: int) -> dict:
    """Run ``command``, sampling the RSS of its process tree; RSS at 10/50/100% of chunks."""
    shutil.rmtree(parts_dir, ignore_errors=True)  # parts kept by an earlier run would count
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    handle = psutil.Process(proc.pid)
    samples, marks = [], {}
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [handle, *handle.children(recursive=True)])
        except psutil.Error:
            break
        done = len(list(parts_dir.glob("chunk-*.parquet"))) if parts_dir.exists() else 0
        samples.append((time.perf_counter() - started, done / n_chunks, rss / 2**20))
        for mark in (0.1, 0.5, 1.0):
            if done / n_chunks >= mark and mark not in marks:
                marks[mark] = round(rss / 2**20, 1)
        time.sleep(0.5)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{err[-3000:]}")
    return {"wall_seconds": round(wall, 1), "stdout": out[-2000:],
            "rss_mb_at_fraction_of_chunks": {f"{int(k * 100)}%": v for k, v in marks.items()},
            "rss_mb_samples_max": round(max(s[2] for s in samples), 1) if samples else None,
            "peak_rss_mb_children": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def route_command(router: Path, log: Path, out: Path, chunk: int, extra=()) -> list[str]:
    return ["-m", "capsat.cli", "route", "--router", str(router), "--input", str(log),
            "--output", str(out), "--chunk-size", str(chunk), "--id-field", "id",
            "--no-progress", "--keep-parts", *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--small-lines", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--work", default="/tmp/capsat-route-bench")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    from capsat.routing.resolve import resolve_router

    t0 = time.perf_counter()
    router_dir = work / "knn_mmlu_pro"
    resolved = resolve_router("knn", fit_data="mmlu_pro", fit_part="train",
                              candidates=MODELS)
    resolved.router.save(router_dir)
    fit_seconds = time.perf_counter() - t0

    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other "
                         f"jobs)", "router": "knn fitted on the train part of mmlu_pro (5 small "
                                        "models); log drawn from the test part",
              "fit_seconds": round(fit_seconds, 1), "candidates": MODELS, "runs": {}}
    for name, lines in (("large", args.lines), ("small", args.small_lines)):
        log = work / f"log_{lines}.jsonl"
        if not log.exists():
            t = time.perf_counter()
            build_log(log, lines)
            print(f"built {log} ({lines} lines) in {time.perf_counter() - t:.0f}s", flush=True)
        n_chunks = -(-lines // args.chunk_size)
        out = work / f"out_{lines}.jsonl"
        command = [sys.executable, *route_command(router_dir, log, out, args.chunk_size)]
        run = run_sampled(command, Path(str(out) + ".parts"), n_chunks)
        summary = json.loads(Path(str(out) + ".summary.json").read_text())
        run.update({"lines": lines, "log_mb": round(log.stat().st_size / 2**20, 1),
                    "rows_per_second": round(lines / run["wall_seconds"], 1),
                    "score_rows_per_second": summary["timing"]["rows_per_second"],
                    "routed": summary["routed"], "rejected": summary["rejected"],
                    "expected_accuracy": summary["expected_accuracy"],
                    "realised_accuracy": summary.get("realised", {}).get("accuracy"),
                    "best_single": summary["best_single"], "timing": summary["timing"]})
        result["runs"][f"{name}_1proc"] = run
        print(json.dumps({k: v for k, v in run.items() if k != "stdout"}), flush=True)
        if name == "small":
            out2 = work / f"out_{lines}_2proc.jsonl"
            command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                       "--num_processes", "2", "--main_process_port", str(free_port()),
                       *route_command(router_dir, log, out2, args.chunk_size)]
            run2 = run_sampled(command, Path(str(out2) + ".parts"), n_chunks)
            run2["identical_to_1proc"] = out2.read_bytes() == out.read_bytes()
            run2["speedup"] = round(run["wall_seconds"] / run2["wall_seconds"], 2)
            summary2 = json.loads(Path(str(out2) + ".summary.json").read_text())
            run2["score_speedup"] = round(summary["timing"]["score_seconds"]
                                          / summary2["timing"]["score_seconds"], 2)
            run2["timing"] = summary2["timing"]
            result["runs"]["small_2proc"] = run2
            print(json.dumps({k: v for k, v in run2.items() if k != "stdout"}), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "route_log.json", result, indent=2)
    write_readme_section(result, args)


def write_readme_section(result: dict, args) -> None:
    large, small = result["runs"]["large_1proc"], result["runs"]["small_1proc"]
    two = result["runs"]["small_2proc"]
    rows = ["| run | lines | wall s | rows/s | peak RSS MB | RSS at 10% / 50% / 100% MB |",
            "|---|---|---|---|---|---|"]
    for name, run in (("1 process", large), ("1 process", small), ("2 processes", two)):
        marks = run["rss_mb_at_fraction_of_chunks"]
        rows.append(f"| {name} | {run.get('lines', small['lines'])} | {run['wall_seconds']} | "
                    f"{round(run.get('lines', small['lines']) / run['wall_seconds'])} | "
                    f"{run['rss_mb_samples_max']} | {marks.get('10%')} / {marks.get('50%')} / "
                    f"{marks.get('100%')} |")
    section = (
        f"`python bench/route_log.py --lines {args.lines} --small-lines {args.small_lines}` "
        f"on {result['machine']}; kNN fitted on the train part of mmlu_pro's query split "
        f"(seed 0, five small models) in {result['fit_seconds']} s (embeddings from the disk "
        f"cache). JSONL log of real MMLU-Pro questions drawn from the test part (seeded draws, "
        f"instructions repeat; every 10th line labelled: realised accuracy "
        f"{large['realised_accuracy']:.4f} against {large['best_single']['realised_accuracy']:.4f} "
        f"for always {large['best_single']['model']}), chunks of {args.chunk_size}; RSS of the "
        f"process tree "
        f"(both processes for the 2-process run) sampled every 0.5 s. 2 processes = "
        f"`accelerate launch --multi_gpu --num_processes 2 -m capsat.cli route ...`: speed-up "
        f"{two['speedup']}x wall ({two['score_speedup']}x scoring), output byte-identical to "
        f"one process: {two['identical_to_1proc']}.\n\n" + "\n".join(rows) + "\n")
    replace_section(TITLE, section)


if __name__ == "__main__":
    main()
