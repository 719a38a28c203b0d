"""Cost-aware batch routing on RouterBench (real per-call USD costs).

Routers (knn, kmeans, best_single) are fitted on the train part of a seeded query split of the
shipped routerbench table (hyper-parameters on its validation part); the test part is written
as a labelled JSONL log (``score|MODEL``, ``cost|MODEL``: the real outcomes and USD costs) and
routed with ``capsat route`` / ``capsat frontier`` machinery. Prices are each model's mean
cost per call on the train part. Reports the tradeoff-policy frontier (realised accuracy
against realised cost, single models as points) and the budget policy's realised accuracy at
50% of the best single model's cost (best single = best train accuracy).

    python bench/route_routerbench.py

Writes bench/results/route_routerbench.json, route_routerbench.png and a README section.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from results_readme import replace_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
ROUTERS = ["knn", "kmeans", "best_single"]
SEED = 0


TITLE = "Batch routing on RouterBench: frontier and budget"


def main() -> None:
    from capsat.evaluation.metrics import upper_envelope
    from capsat.evaluation.plots import _save, plt
    from capsat.routing import RouteConfig, frontier, run_route
    from data_builders.atomic import write_json
    from data_builders.experiment import prepare_experiment

    work = Path("/tmp/capsat-route-routerbench")
    work.mkdir(parents=True, exist_ok=True)
    experiment = prepare_experiment("routerbench", seed=SEED)
    table, notes, split = experiment.table, experiment.notes, experiment.split
    test = table.subset(list(split.test))
    log = work / "routerbench_test.jsonl"
    with open(log, "w", encoding="utf-8") as fh:
        for q, text in zip(test.query_ids, test.texts):
            row = {"id": q, "instruction": text}
            row.update({f"score|{m}": float(test.scores.at[q, m]) for m in test.models})
            row.update({f"cost|{m}": float(test.costs.at[q, m]) for m in test.models})
            fh.write(json.dumps(row) + "\n")

    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other "
                         f"jobs)", "data": "routerbench", "split": split.sizes(),
              "notes": notes, "log": str(log), "routers": {}}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name in ROUTERS:
        started = time.perf_counter()
        config = RouteConfig(router=name, input=str(log), fit_data="routerbench",
                             fit_part="train", seed=SEED, id_field="id", chunk_size=256,
                             progress=False)
        front = frontier(config, "tradeoff", work / f"frontier_{name}", n_points=40)
        best = front["best_single"]["model"]
        single = front["single_models"][best]
        budget = 0.5 * single["expected_cost"] * front["rows_routed"]
        summary = run_route(RouteConfig(**{**config.__dict__, "policy": f"budget:{budget}",
                                           "output": str(work / f"budget_{name}.jsonl")}))
        s = summary.to_json()
        result["routers"][name] = {
            "seconds": round(time.perf_counter() - started, 1),
            "fit": s["router"].get("fit"),
            "best_single": {"model": best, **single},
            "budget_at_half_best_single_cost": {
                "budget_usd_total": budget, "spend_expected_usd": s["budget"]["spend"],
                "feasible": s["budget"]["feasible"], "dual_price": s["budget"]["dual_price"],
                "realised_accuracy": s["realised"]["accuracy"],
                "realised_cost_per_row": s["realised"]["cost_per_row"],
                "realised_total_cost": s["realised"]["total_cost"],
                "share_per_model": {m: v for m, v in s["share_per_model"].items() if v}},
            "max_accuracy": front["points"][0],
            "frontier": [[p["realised_cost"], p["realised_accuracy"], p["knob"]]
                         for p in front["points"]]}
        points = np.array([[p["realised_cost"], p["realised_accuracy"]]
                           for p in front["points"]])
        env = upper_envelope(points)
        line, = ax.plot(env[:, 0], env[:, 1], "-", label=f"{name} (tradeoff sweep)")
        ax.plot(points[:, 0], points[:, 1], ".", color=line.get_color(), alpha=0.4)
        b = result["routers"][name]["budget_at_half_best_single_cost"]
        ax.scatter(b["realised_cost_per_row"], b["realised_accuracy"], marker="*", s=120,
                   color=line.get_color(), zorder=4,
                   label=f"{name}, budget = 50% of {best}'s cost")
        result["single_models"] = front["single_models"]
        print(name, json.dumps(b), flush=True)
    for model, row in result["single_models"].items():
        ax.scatter(row["realised_cost"], row["realised_accuracy"], color="grey", s=18, zorder=3)
        ax.annotate(model, (row["realised_cost"], row["realised_accuracy"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("realised mean cost per query (USD), RouterBench test part")
    ax.set_ylabel("realised accuracy")
    ax.set_title("RouterBench: batch routing, accuracy against real cost")
    ax.legend(fontsize=7)
    RESULTS.mkdir(parents=True, exist_ok=True)
    _save(fig, RESULTS / "route_routerbench.png")
    write_json(RESULTS / "route_routerbench.json", result, indent=2)
    write_readme_section(result)


def write_readme_section(result: dict) -> None:
    rows = ["| router | max-accuracy acc | its cost/query | budget acc | budget cost/query | "
            "best single (train) acc | its cost/query |", "|---|---|---|---|---|---|---|"]
    for name, r in result["routers"].items():
        b, m, s = r["budget_at_half_best_single_cost"], r["max_accuracy"], r["best_single"]
        rows.append(f"| {name} | {m['realised_accuracy']:.4f} | {m['realised_cost']:.3g} | "
                    f"{b['realised_accuracy']:.4f} | {b['realised_cost_per_row']:.3g} | "
                    f"{s['realised_accuracy']:.4f} ({s['model']}) | {s['realised_cost']:.3g} |")
    section = (f"`python bench/route_routerbench.py` on {result['machine']}. Routers fitted on "
               f"the train part of a seeded query split ({result['split']['train_queries']} "
               f"train / {result['split']['validation_queries']} validation queries); the "
               f"{result['split']['test_queries']} test queries routed as a labelled JSONL log. "
               "Prices = mean USD cost per call on train. Budget = 50% of the best single "
               "model's (best train accuracy) expected total cost on the log; accuracy and "
               "cost are realised (the log's real labels and USD costs). Plot: "
               "[`route_routerbench.png`](route_routerbench.png).\n\n" + "\n".join(rows) + "\n")
    replace_section(TITLE, section)


if __name__ == "__main__":
    main()
