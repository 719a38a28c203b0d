"""Compare every router on every shipped data set; write bench/results/*.json and a table.

    python bench/compare_routers.py            # all settings
    python bench/compare_routers.py --only mmlu_pro_small

Each setting is one `capsat eval` run (query split, 20% test, seed 0, validation carved from
train). Results: bench/results/<setting>.json (the full results.json), PNG plots in
bench/results/<setting>/, and bench/results/README.md (one table per setting).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

from capsat.evaluation import evaluate, format_table
from data_builders.atomic import write_json, write_text

SMALL_OPEN_MODELS = ["Meta-Llama-3_1-8B-Instruct", "Phi-3-mini-4k-instruct", "mathstral-7B",
                     "gemma-7b", "Qwen1.5-7B-Chat"]

SETTINGS = {
    "mmlu_pro_all": dict(data="mmlu_pro", models=None,
                         title="MMLU-Pro, all 29 models, query split"),
    "mmlu_pro_small": dict(data="mmlu_pro", models=SMALL_OPEN_MODELS,
                           title="MMLU-Pro, five small open models, query split"),
    "llmrouter": dict(data="llmrouter", models=None,
                      title="LLMRouter (14 benchmarks x 9 models, leak-free), query split"),
    "routerbench": dict(data="routerbench", models=None,
                        title="RouterBench (arc-challenge, mbpp, winogrande x 11 models, real "
                              "USD cost), query split"),
}
RESULTS = Path(__file__).resolve().parent / "results"


def run(name: str, routers: str, seed: int) -> dict:
    setting = SETTINGS[name]
    t0 = time.perf_counter()
    result = evaluate(setting["data"], "query", routers, models=setting["models"], seed=seed,
                      out_dir=RESULTS / name)
    seconds = time.perf_counter() - t0
    payload = result.to_json()
    payload["bench"] = {"setting": name, "title": setting["title"], "wall_seconds": seconds,
                        "command": f"python bench/compare_routers.py --only {name}",
                        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    write_json(RESULTS / f"{name}.json", payload, indent=2)
    print(f"\n## {setting['title']}  ({seconds:.0f} s)\n{format_table(result)}", flush=True)
    return payload


def write_table() -> None:
    parts = ["# Router comparison on the shipped data\n",
             "Produced by `python bench/compare_routers.py` (query split, 20% test, seed 0; "
             "hyper-parameters and early stopping on a validation split carved from train). "
             "`acc` = routed accuracy, `gap` = gap closed between the best single model "
             "(chosen on train) and the oracle, AUC / log-loss / ECE over (query, model) pairs; "
             "`best_single` is the constant per-model prior. Cost columns where the data has "
             "costs (`cost@best` = the lowest mean cost per query at which the router's "
             "accuracy-cost curve reaches the best single model's accuracy).\n"]
    for name, setting in SETTINGS.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        payload = json.loads(path.read_text())
        from capsat.evaluation.harness import EvalResult

        fields = {k: payload[k] for k in EvalResult.__dataclass_fields__}
        result = EvalResult(**fields)
        bench = payload["bench"]
        parts.append(f"## {setting['title']}\n")
        parts.append(f"`{bench['command']}` — {bench['wall_seconds']:.0f} s wall on "
                     f"{bench['machine']}, peak RSS {bench['peak_rss_mb']:.0f} MB; "
                     f"plots in [`{name}/`]({name}/).\n")
        parts.append(format_table(result, markdown=True))
        if result.notes or result.skipped:
            parts.append("\n".join(f"- {n}" for n in result.notes +
                                   [f"skipped {k}: {v}" for k, v in result.skipped.items()]))
        parts.append("")
    parts.append("## Other benchmarks\n")
    parts.append("- [`smoothie.md`](smoothie.md): label-free SMOOTHIE on RouterBench "
                 "(`python bench/smoothie_report.py --run`).")
    parts.append("- `capsat_*/`: the CapSAT router beside the classic ones (`results.md` in each, "
                 "with the training log and summary; commands in the folder's `README.md`).")
    parts.append("- `packing_cost*.json`: cost of scoring 29 candidates in one packed pass "
                 "(`python bench/packing_cost.py`).")
    write_text(RESULTS / "README.md", "\n".join(parts) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(SETTINGS),
                        help="run only this setting (repeatable)")
    parser.add_argument("--routers", default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(SETTINGS):
        run(name, args.routers, args.seed)
    write_table()
    print(f"\nwrote {RESULTS}/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
