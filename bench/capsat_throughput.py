"""How fast a CapSAT router scores real instructions on this machine: rows per second with
every candidate, by the capability encoder alone and (for a router with an LLM) through the
LLM, and what the packed pass costs relative to one plain forward over the same instructions.

    python bench/capsat_throughput.py                  # the shipped default router
    python bench/capsat_throughput.py --router runs/capsat_cpu/best --rows 96

Rows are the shipped test-part log's instructions (real MMLU-Pro questions). Each figure is
the median of ``--repeats`` timed passes after one warm-up pass. Writes
bench/results/capsat_throughput.json and a section of bench/results/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from results_readme import replace_section

from data_builders.atomic import write_json

ROOT = Path(__file__).resolve().parent.parent
LOG = ROOT / "data_builders" / "shipped" / "mmlu_pro_test_log.jsonl"
RESULTS = ROOT / "bench" / "results"
TITLE = "CapSAT scoring throughput"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", default="default")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from capsat.capsat_model.router import CapsatRouter
    from capsat.routers import Queries

    router = CapsatRouter.from_pretrained(args.router)
    router.progress = False
    texts = [json.loads(line)["instruction"] for line in
             LOG.read_text().splitlines()[:args.rows]]
    queries = Queries(texts, embeddings=router.embed(Queries(texts)))  # embeddings cached
    network = router.network

    def through_llm():
        router.read_through_llm = True
        router.predict_proba(queries)

    def encoder_only():
        router.read_through_llm = False
        router.predict_proba(queries)

    def plain_forward():  # the LLM reading each prompt once, no candidate, same batches
        size = router.config.predict_batch_size
        pad = network.tokenizer.pad_token_id
        with torch.no_grad():
            for start in range(0, len(texts), size):
                rows = [network.instruction_ids(t) for t in texts[start:start + size]]
                width = max(map(len, rows))
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
                network.llm.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)

    seconds = {"encoder_only": median_seconds(encoder_only, args.repeats)}
    if router.config.use_llm:  # a router saved without its LLM (gate 0) has only the encoder
        seconds["llm"] = median_seconds(through_llm, args.repeats)
        seconds["plain_forward"] = median_seconds(plain_forward, args.repeats)
    router.read_through_llm = True
    lengths = [len(network.instruction_ids(t)) for t in texts] if router.config.use_llm else []
    result = {
        "router": args.router, "candidates": len(router.models), "rows": len(texts),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads "
                   f"{torch.get_num_threads()}",
        "median_seconds": seconds,
        "rows_per_second": {k: len(texts) / v for k, v in seconds.items()},
        "packed_over_plain_forward": (seconds["llm"] / seconds["plain_forward"]
                                      if "plain_forward" in seconds else None),
        "instruction_tokens_median": float(np.median(lengths)) if lengths else None,
        "command": "python bench/capsat_throughput.py " + " ".join(argv or sys.argv[1:]),
    }
    write_json(RESULTS / "capsat_throughput.json", result, indent=2)
    rate = result["rows_per_second"]
    body = (f"`{result['command'].strip()}` on {result['machine']}: {result['candidates']} "
            f"candidates, {result['rows']} real MMLU-Pro instructions"
            + (f" (median {result['instruction_tokens_median']} prompt tokens)"
               if lengths else "; the router has no LLM, so only its encoder scores")
            + ".\n\n"
            "| scoring | rows/s |\n|---|---|\n"
            + "".join(f"| {k} | {v:.2f} |\n" for k, v in rate.items())
            + (f"\nThe packed pass over every candidate costs "
               f"{result['packed_over_plain_forward']:.2f}x one plain forward over the same "
               f"instructions.\n" if result["packed_over_plain_forward"] else ""))
    replace_section(TITLE, body)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
