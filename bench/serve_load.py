"""capsat serve under load: latency percentiles, throughput, no request lost, one decision-log
line per request; micro-batching on against off.

The kNN router is fitted on the train part of mmlu_pro's query split (the five small open
models) and saved; requests are real MMLU-Pro questions of the test part. ``capsat serve`` runs
as a child process (the real command), the stub backend (tests/stub_backend.py, an instant
OpenAI-compatible echo) as another, and this script is the client (httpx2, asyncio).

Phases, each against a fresh server and decision log:
- ``route``: N ``POST /v1/route`` at concurrency C, micro-batching on (``--batch-max-size 32
  --batch-window-ms 2``) and off (``--batch-max-size 1``);
- ``chat``: M ``POST /v1/chat/completions`` proxied to the stub, at concurrency C, on and off.

    python bench/serve_load.py [--route-requests 500] [--chat-requests 100] [--concurrency 16]

Writes bench/results/serve_load.json and a section of bench/results/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import numpy as np
from results_readme import replace_section

from data_builders.atomic import write_json

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
MODELS = ["Meta-Llama-3_1-8B-Instruct", "Phi-3-mini-4k-instruct", "mathstral-7B", "gemma-7b",
          "Qwen1.5-7B-Chat"]
STUB = ("import sys, uvicorn; sys.path.insert(0, sys.argv[2]); "
        "from stub_backend import create_stub_app; "
        "uvicorn.run(create_stub_app(), host='127.0.0.1', port=int(sys.argv[1]), "
        "log_level='warning')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, path: str = "/health") -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            if httpx2.get(url + path, timeout=2).status_code < 500:
                return
        except httpx2.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def fit_router(work: Path) -> tuple[Path, list[str]]:
    from capsat.routing.resolve import resolve_router
    from data_builders.experiment import prepare_experiment

    router_dir = work / "knn_mmlu_pro"
    resolved = resolve_router("knn", fit_data="mmlu_pro", fit_part="train", candidates=MODELS,
                              progress=False)
    resolved.router.save(router_dir)
    experiment = prepare_experiment("mmlu_pro", models=MODELS, seed=0)
    test = experiment.table.subset(list(experiment.split.test))
    return router_dir, test.texts


def percentiles(values: list[float]) -> dict:
    ms = np.array(values) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p90_ms": round(float(np.percentile(ms, 90)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2)}


async def load(url: str, bodies: list[dict], concurrency: int) -> dict:
    limit = asyncio.Semaphore(concurrency)
    latencies, statuses = [], []
    async with httpx2.AsyncClient(timeout=120, limits=httpx2.Limits(
            max_connections=concurrency)) as client:
        async def one(body):
            async with limit:
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=body)
                    statuses.append(response.status_code)
                except httpx2.TransportError as err:
                    statuses.append(type(err).__name__)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - started
    ok = sum(1 for s in statuses if s == 200)
    return {"requests": len(bodies), "ok": ok, "failed": len(bodies) - ok,
            "wall_s": round(wall, 3), "throughput_rps": round(len(bodies) / wall, 1),
            **percentiles(latencies)}


def phase(router_dir: Path, backends: Path, work: Path, endpoint: str, bodies: list[dict],
          concurrency: int, batching: bool) -> dict:
    port, log = free_port(), work / f"decisions-{endpoint}-{batching}.jsonl"
    command = [sys.executable, "-m", "capsat.cli", "serve", "--router", str(router_dir),
               "--backends", str(backends), "--port", str(port), "--decision-log", str(log),
               "--batch-max-size", "32" if batching else "1", "--batch-window-ms", "2"]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server)
        # Warm up (the encoder's first call) outside the measurement; its line is counted.
        httpx2.post(url + "/v1/route", json={"prompt": "warm up"}, timeout=120)
        path = "/v1/route" if endpoint == "route" else "/v1/chat/completions"
        result = asyncio.run(load(url + path, bodies, concurrency))
        metrics = httpx2.get(url + "/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = log.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole JSON
    batch_sum = batch_count = 0.0
    for line in metrics.splitlines():
        if line.startswith("capsat_batch_size_sum"):
            batch_sum = float(line.split()[-1])
        if line.startswith("capsat_batch_size_count"):
            batch_count = float(line.split()[-1])
    result.update({"endpoint": endpoint, "micro_batching": batching, "concurrency": concurrency,
                   "log_lines": len(lines) - 1,  # less the warm-up
                   "log_lines_match": len(lines) - 1 == len(bodies),
                   "log_statuses": sorted({r["status"] for r in records[1:]}),
                   "mean_batch_size": round(batch_sum / batch_count, 2) if batch_count else None,
                   "mean_routing_ms": round(float(np.mean([r["routing_ms"]
                                                           for r in records[1:]])), 2)})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--route-requests", type=int, default=500)
    parser.add_argument("--chat-requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="capsat-serve-load-"))
    router_dir, texts = fit_router(work)
    stub_port = free_port()
    stub = subprocess.Popen([sys.executable, "-c", STUB, str(stub_port), str(ROOT / "tests")])
    try:
        wait_healthy(f"http://127.0.0.1:{stub_port}", stub, "/docs")
        backends = work / "backends.yaml"
        backends.write_text("models:\n" + "".join(
            f"  {m}:\n    base_url: http://127.0.0.1:{stub_port}/v1\n    model: echo\n"
            f"    cost_per_call: {0.001 * (j + 1)}\n" for j, m in enumerate(MODELS)))
        rng = np.random.default_rng(0)
        picks = rng.choice(len(texts), size=max(args.route_requests, args.chat_requests))
        messages = [[{"role": "user", "content": texts[i]}] for i in picks]
        runs = []
        for batching in (True, False):
            runs.append(phase(router_dir, backends, work, "route",
                              [{"model": "capsat", "messages": m}
                               for m in messages[:args.route_requests]],
                              args.concurrency, batching))
            runs.append(phase(router_dir, backends, work, "chat",
                              [{"model": "capsat", "messages": m, "max_tokens": 16}
                               for m in messages[:args.chat_requests]],
                              args.concurrency, batching))
            print(json.dumps(runs[-2:], indent=1), flush=True)
    finally:
        stub.terminate()
        stub.wait(timeout=30)
    result = {"router": "knn (mmlu_pro train part, 5 small open models)",
              "backend": "stub echo (tests/stub_backend.py), instant",
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
              "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "serve_load.json", result)
    rows = ["| endpoint | micro-batching | requests | ok | throughput (req/s) | p50 ms | p90 ms "
            "| p99 ms | max ms | mean batch | log lines = requests |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rows.append(f"| {r['endpoint']} | {'on' if r['micro_batching'] else 'off'} | "
                    f"{r['requests']} | {r['ok']} | {r['throughput_rps']} | {r['p50_ms']} | "
                    f"{r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['mean_batch_size']} | "
                    f"{'yes' if r['log_lines_match'] else 'NO'} |")
    replace_section("Serving: capsat serve under load (kNN router, stub backend)",
                    "`python bench/serve_load.py` (" + result["machine"] + f", concurrency "
                    f"{args.concurrency}): `capsat serve` as a child process, the kNN router "
                    "fitted on the train part of mmlu_pro (5 small open models), real test-part "
                    "questions, an instant stub backend for the proxied calls. Latency is the "
                    "client's, end to end.\n\n" + "\n".join(rows) + "\n")
    print(f"wrote {RESULTS / 'serve_load.json'} and bench/results/README.md")


if __name__ == "__main__":
    main()
