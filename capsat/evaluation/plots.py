"""PNG plots of an evaluation: per-task accuracy, and accuracy against cost."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data_builders.atomic import atomic_path  # noqa: E402

COST_LABELS = {"usd": "mean cost per query (USD)",
               "output_chars": "mean output length per query (characters)"}


def _save(fig, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)


def plot_per_task(result, path: Path) -> None:
    """Grouped bars: routed accuracy per task for each router, oracle and best single as marks."""
    names = [n for n in result.routers if n != "oracle"]
    tasks = sorted({t for row in result.routers.values() for t in row["per_task"]})
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(tasks) * max(1, len(names) / 3)), 4.5))
    x = np.arange(len(tasks))
    for i, name in enumerate(names):
        values = [result.routers[name]["per_task"].get(t, np.nan) for t in tasks]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    if "oracle" in result.routers:
        ax.scatter(x, [result.routers["oracle"]["per_task"].get(t) for t in tasks], marker="_",
                   s=400, color="black", label="oracle", zorder=3)
    ax.set_xticks(x, tasks, rotation=40, ha="right")
    ax.set_ylabel("routed accuracy")
    ax.set_title(f"{result.data}: per-task routed accuracy ({result.split['kind']} split)")
    ax.legend(fontsize=7, ncol=min(len(names) + 1, 6), loc="upper center",
              bbox_to_anchor=(0.5, -0.3))
    _save(fig, path)


def plot_cost_curves(result, path: Path) -> None:
    """Each router's accuracy-cost curve, with the single models as points."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, curve in result.curves.items():
        if name == "oracle":
            continue
        curve = np.asarray(curve)
        ax.plot(curve[:, 0], curve[:, 1], marker=".", markersize=3, label=name)
    for model, row in result.single_models.items():
        ax.scatter(row["cost"], row["accuracy"], color="grey", s=18, zorder=3)
        ax.annotate(model, (row["cost"], row["accuracy"]), fontsize=6, alpha=0.8)
    ax.axhline(result.reference["best_single"], color="grey", ls=":", lw=1,
               label="best single (chosen on train)")
    ax.axhline(result.reference["oracle"], color="black", ls="--", lw=1, label="oracle")
    ax.set_xscale("log")
    ax.set_xlabel(COST_LABELS.get(result.cost_unit, "mean cost per query"))
    ax.set_ylabel("accuracy")
    ax.set_title(f"{result.data}: accuracy against cost ({result.split['kind']} split)")
    ax.legend(fontsize=7)
    _save(fig, path)
