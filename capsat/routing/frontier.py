"""``capsat frontier``: sweep a policy's knob over a (labelled) log; accuracy against cost.

The log is scored once (the routing job's parts); each knob value is then one streaming pass
over the parts. Realised accuracy and cost come from the log's labels (``score|MODEL``,
``cost|MODEL``); without labels the expected values (mean P, priced cost) are plotted.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np

from data_builders.atomic import write_text
from data_builders.errors import DataError

from ..evaluation.metrics import upper_envelope
from .io import detect_format
from .job import (
    RouteConfig,
    budget_dual_price,
    chunk_name,
    evaluate_parts,
    part_paths,
    resolve_prices,
    run_route,
    work_dir_of,
)
from .policies import Policy

SWEEPS = ("tradeoff", "threshold", "budget")


def knob_values(kind: str, n_points: int, *, cost_spread: float = 1.0,
                spend_range: tuple[float, float] = (0.0, 1.0)) -> list[float]:
    if kind == "tradeoff":  # as metrics.cost_curve: from "P dominates" to "cost dominates"
        return [0.0] + (np.logspace(-3, 3, n_points - 1) / cost_spread).tolist()
    if kind == "threshold":
        return np.linspace(0.0, 1.0, n_points).tolist()
    if kind == "budget":
        low, high = spend_range
        return np.linspace(low, high, n_points).tolist()
    raise DataError(f"unknown sweep {kind!r}; known: {list(SWEEPS)}", field="policy")


def _point(totals, knob: float, extra: dict | None = None) -> dict:
    point = {"knob": knob, "expected_accuracy": totals.expected_accuracy(),
             "expected_cost": totals.expected_cost(),
             "realised_accuracy": totals.realised_accuracy(),
             "realised_cost": totals.realised_cost(),
             "share": {m: int(c) / max(totals.routed, 1)
                       for m, c in zip(totals.models, totals.picks)}}
    point.update(extra or {})
    return point


def frontier(config: RouteConfig, sweep: str, out_dir: str | Path, n_points: int = 25,
             plot: bool = True) -> dict | None:
    """Score the log, sweep ``sweep`` (tradeoff | threshold | budget), write
    ``frontier.json`` and ``frontier.png`` under ``out_dir``. Returns the result (main only)."""
    if sweep not in SWEEPS:
        raise DataError(f"unknown sweep {sweep!r}; known: {list(SWEEPS)}", field="policy")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = config.input_format or detect_format(config.input)
    routed = out_dir / f"routed.{fmt}"
    config = dataclasses.replace(config, output=str(routed), policy="max-accuracy",
                                 keep_parts=True, output_format=fmt)
    summary = run_route(config)
    if summary is None:
        return None
    work = work_dir_of(config)
    models = list(summary.totals.models)
    has_ids = config.id_field is not None
    n_chunks = math.ceil(summary.rows_in / config.chunk_size)
    paths = part_paths(work, n_chunks)
    from ..routers import Router

    router = Router.load(work / "router") if (work / "router" / "router.json").exists() else None
    prices = resolve_prices(config, router, models, work)
    if prices is None:
        raise DataError("a frontier needs prices: give --prices FILE or DATA", field="prices")
    points = []
    if sweep == "budget":
        cheapest, _ = evaluate_parts(paths, models, Policy("tradeoff", 1e300), prices, has_ids)
        dearest, _ = evaluate_parts(paths, models, Policy("max-accuracy"), prices, has_ids)
        values = knob_values("budget", n_points, spend_range=(cheapest.sum_cost_chosen,
                                                              dearest.sum_cost_chosen))
        for budget in values:
            solution = budget_dual_price(paths, models, prices, budget)
            totals, _ = evaluate_parts(paths, models, Policy("budget", budget), prices, has_ids,
                                       lam=solution.lam)
            points.append(_point(totals, budget, {"spend": solution.spend,
                                                  "dual_price": solution.lam,
                                                  "feasible": solution.feasible}))
    else:
        spread = float(np.ptp(prices.per_call)) or float(
            np.ptp(prices.matrix(np.array([400.0]))[0])) or 1.0
        for value in knob_values(sweep, n_points, cost_spread=spread):
            totals, _ = evaluate_parts(paths, models, Policy(sweep, value), prices, has_ids)
            points.append(_point(totals, value))
    singles = summary.totals.single_models()
    labelled = summary.totals.labelled > 0
    costs_labelled = summary.totals.cost_labelled > 0
    result = {"input": config.input, "sweep": sweep, "router": summary.router,
              "rows_routed": summary.totals.routed, "labelled": labelled,
              "axes": {"accuracy": "realised" if labelled else "expected",
                       "cost": "realised" if costs_labelled else "expected"},
              "prices": prices.to_json(), "points": points, "single_models": singles,
              "best_single": {"model": summary.best_single_model,
                              "chosen_by": summary.best_single_chosen_by}}
    write_text(out_dir / "frontier.json", json.dumps(result, indent=2) + "\n")
    if plot:
        plot_frontier(result, out_dir / "frontier.png")
    shutil.rmtree(work)
    return result


def _axes(row: dict, result: dict) -> tuple[float | None, float | None]:
    acc = row.get(f"{result['axes']['accuracy']}_accuracy")
    cost = row.get(f"{result['axes']['cost']}_cost")
    return cost, acc


def plot_frontier(result: dict, path: Path) -> None:
    from ..evaluation.plots import COST_LABELS, _save, plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    pts = np.array([_axes(p, result) for p in result["points"]], dtype=float)
    pts = pts[~np.isnan(pts).any(axis=1)]
    if len(pts):
        order = np.argsort(pts[:, 0], kind="stable")
        ax.plot(pts[order, 0], pts[order, 1], ".", color="tab:blue", alpha=0.5,
                label=f"{result['sweep']} sweep")
        env = upper_envelope(pts)
        ax.plot(env[:, 0], env[:, 1], "-", color="tab:blue", label="frontier (upper envelope)")
    for model, row in result["single_models"].items():
        cost, acc = _axes(row, result)
        if cost is None or acc is None:
            continue
        ax.scatter(cost, acc, color="grey", s=18, zorder=3)
        ax.annotate(model, (cost, acc), fontsize=6, alpha=0.8)
    costs = [c for c, _ in (_axes(r, result) for r in result["single_models"].values())
             if c]
    if costs and max(costs) / max(min(costs), 1e-300) > 20:
        ax.set_xscale("log")
    unit = result["prices"]["unit"]
    ax.set_xlabel(f"{result['axes']['cost']} " + COST_LABELS.get(unit, "mean cost per query"))
    ax.set_ylabel(f"{result['axes']['accuracy']} accuracy")
    ax.set_title(f"{Path(result['input']).name}: {result['sweep']} policy, accuracy against "
                 f"cost")
    ax.legend(fontsize=7)
    _save(fig, path)


__all__ = ["frontier", "knob_values", "plot_frontier", "chunk_name"]
