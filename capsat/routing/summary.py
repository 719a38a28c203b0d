"""Running totals over routed chunks -> the end-of-job summary (printed and JSON).

Everything is a sum over rows, so memory is O(models) whatever the log size. Realised values
come from the log's own outcome labels (``score|MODEL`` / ``cost|MODEL``) where present.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Totals:
    models: list[str]
    has_costs: bool
    routed: int = 0
    picks: np.ndarray = None
    sum_p_chosen: float = 0.0
    sum_cost_chosen: float = 0.0
    sum_p_model: np.ndarray = None
    sum_cost_model: np.ndarray = None
    # realised, from labels
    labelled: int = 0
    sum_score_chosen: float = 0.0
    cost_labelled: int = 0
    sum_real_cost_chosen: float = 0.0
    score_count_model: np.ndarray = None
    sum_score_model: np.ndarray = None
    cost_count_model: np.ndarray = None
    sum_real_cost_model: np.ndarray = None
    with_system: int = 0
    with_earlier_turns: int = 0
    with_task: int = 0
    with_unknown_task: int = 0  # a label the router does not know: routed from the text
    seen: int = 0  # labelled rows the router was fitted on

    def __post_init__(self):
        m = len(self.models)
        for name in ("picks", "score_count_model", "cost_count_model"):
            setattr(self, name, np.zeros(m, dtype=np.int64))
        for name in ("sum_p_model", "sum_cost_model", "sum_score_model", "sum_real_cost_model"):
            setattr(self, name, np.zeros(m))

    def add(self, choice: np.ndarray, probs: np.ndarray, costs: np.ndarray | None,
            scores: np.ndarray, real_costs: np.ndarray, flags: dict[str, int],
            seen: np.ndarray | None = None) -> None:
        rows = np.arange(len(choice))
        self.routed += len(choice)
        self.picks += np.bincount(choice, minlength=len(self.models))
        self.sum_p_chosen += float(probs[rows, choice].sum())
        self.sum_p_model += probs.sum(axis=0)
        if costs is not None:
            self.sum_cost_chosen += float(costs[rows, choice].sum())
            self.sum_cost_model += costs.sum(axis=0)
        picked = scores[rows, choice]
        known = ~np.isnan(picked)
        self.labelled += int(known.sum())
        if seen is not None:
            self.seen += int((known & seen).sum())
        self.sum_score_chosen += float(picked[known].sum())
        picked_cost = real_costs[rows, choice]
        known_cost = ~np.isnan(picked_cost)
        self.cost_labelled += int(known_cost.sum())
        self.sum_real_cost_chosen += float(picked_cost[known_cost].sum())
        self.score_count_model += (~np.isnan(scores)).sum(axis=0)
        self.sum_score_model += np.nansum(scores, axis=0)
        self.cost_count_model += (~np.isnan(real_costs)).sum(axis=0)
        self.sum_real_cost_model += np.nansum(real_costs, axis=0)
        self.with_system += flags.get("had_system", 0)
        self.with_earlier_turns += flags.get("had_earlier_turns", 0)
        self.with_task += flags.get("has_task", 0)
        self.with_unknown_task += flags.get("unknown_task", 0)

    # ---------------------------------------------------------------- views
    def expected_accuracy(self) -> float | None:
        return self.sum_p_chosen / self.routed if self.routed else None

    def expected_cost(self) -> float | None:
        return self.sum_cost_chosen / self.routed if self.routed and self.has_costs else None

    def realised_accuracy(self) -> float | None:
        return self.sum_score_chosen / self.labelled if self.labelled else None

    def realised_cost(self) -> float | None:
        return self.sum_real_cost_chosen / self.cost_labelled if self.cost_labelled else None

    def single_models(self) -> dict[str, dict]:
        out = {}
        for j, m in enumerate(self.models):
            row = {"expected_accuracy": _ratio(self.sum_p_model[j], self.routed)}
            if self.has_costs:
                row["expected_cost"] = _ratio(self.sum_cost_model[j], self.routed)
            if self.score_count_model[j]:
                row["realised_accuracy"] = _ratio(self.sum_score_model[j],
                                                  self.score_count_model[j])
            if self.cost_count_model[j]:
                row["realised_cost"] = _ratio(self.sum_real_cost_model[j],
                                              self.cost_count_model[j])
            out[m] = row
        return out


def _ratio(total, count) -> float | None:
    return float(total) / float(count) if count else None


@dataclass
class JobSummary:
    """What the job did: counts, shares, expected and realised accuracy and cost."""

    input: str
    output: str
    errors_file: str
    policy: str
    rows_in: int
    totals: Totals
    rejected_by_reason: Counter = field(default_factory=Counter)
    best_single_model: str | None = None
    best_single_chosen_by: str = ""
    prices: dict | None = None
    budget: dict | None = None
    router: dict | None = None
    #: Whether the realised figures are out of sample (see ``job.realised_status``).
    realised_status: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    task_field: str | None = None  # where the rows' task labels were read (None: not read)

    def to_json(self) -> dict:
        t = self.totals
        rejected = int(sum(self.rejected_by_reason.values()))
        out = {"input": self.input, "output": self.output, "errors_file": self.errors_file,
               "policy": self.policy, "rows_in": self.rows_in, "routed": t.routed,
               "rejected": rejected,
               "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
               "counts_add_up": t.routed + rejected == self.rows_in,
               "share_per_model": {m: (int(c) / t.routed if t.routed else 0.0)
                                   for m, c in zip(t.models, t.picks)},
               "count_per_model": {m: int(c) for m, c in zip(t.models, t.picks)},
               "expected_accuracy": t.expected_accuracy(),
               "expected_cost_per_row": t.expected_cost(),
               "expected_total_cost": t.sum_cost_chosen if t.has_costs else None,
               "chat": {"rows_with_system_prompt_ignored": t.with_system,
                        "rows_with_earlier_turns_ignored": t.with_earlier_turns}}
        if self.task_field is not None:
            out["task_labels"] = {"field": self.task_field, "rows_with_task": t.with_task,
                                  "rows_with_unknown_task": t.with_unknown_task}
        singles = t.single_models()
        if self.best_single_model is not None:
            best = dict(singles[self.best_single_model])
            out["best_single"] = {"model": self.best_single_model,
                                  "chosen_by": self.best_single_chosen_by, **best}
        status = self.realised_status
        if t.labelled and status.get("withheld"):
            out["realised"] = {"labelled_rows": t.labelled, "warning": status["warning"]}
        elif t.labelled:
            out["realised"] = {"labelled_rows": t.labelled,
                               "accuracy": t.realised_accuracy(),
                               "cost_labelled_rows": t.cost_labelled,
                               "cost_per_row": t.realised_cost(),
                               "total_cost": t.sum_real_cost_chosen if t.cost_labelled else None,
                               "rows_seen_in_fitting": t.seen,
                               "fit_part": status.get("fit_part"),
                               "warning": status.get("warning")}
        out["single_models"] = singles
        if self.budget is not None:
            out["budget"] = self.budget
        if self.prices is not None:
            out["prices"] = self.prices
        if self.router is not None:
            out["router"] = self.router
        out["timing"] = self.timing
        return out

    def format(self) -> str:
        d = self.to_json()
        lines = [f"rows in {d['rows_in']}, routed {d['routed']}, rejected {d['rejected']}"
                 + (f" {d['rejected_by_reason']}" if d["rejected"] else "")
                 + ("" if d["counts_add_up"] else "  (COUNTS DO NOT ADD UP)"),
                 f"policy {d['policy']}: expected accuracy {_fmt(d['expected_accuracy'])}, "
                 f"expected cost per row {_fmt(d['expected_cost_per_row'])}"]
        if "best_single" in d:
            b = d["best_single"]
            lines.append(f"always {b['model']} ({b['chosen_by']}): expected accuracy "
                         f"{_fmt(b['expected_accuracy'])}, expected cost per row "
                         f"{_fmt(b.get('expected_cost'))}")
        else:
            lines.append(self.best_single_chosen_by)
        lines.append(describe_fitting(self.router or {}))
        if "task_labels" in d:
            tl = d["task_labels"]
            lines.append(f"task labels ({tl['field']!r}): {tl['rows_with_task']} of "
                         f"{d['routed']} rows, {tl['rows_with_unknown_task']} of them a task "
                         f"the router does not know (routed from the text)")
        if "realised" in d and "accuracy" not in d["realised"]:
            lines.append(f"realised on {d['realised']['labelled_rows']} labelled rows: "
                         f"{d['realised']['warning']}")
        elif "realised" in d:
            r = d["realised"]
            line = (f"realised on {r['labelled_rows']} labelled rows: accuracy "
                    f"{_fmt(r['accuracy'])}, cost per row {_fmt(r['cost_per_row'])}")
            single = d.get("best_single", {})
            if single.get("realised_accuracy") is not None:
                line += (f" (always {single['model']}: accuracy "
                         f"{_fmt(single['realised_accuracy'])}, cost per row "
                         f"{_fmt(single.get('realised_cost'))})")
            if r["warning"]:
                line += f"  [WARNING: {r['warning']}]"
            lines.append(line)
        if "budget" in d:
            b = d["budget"]
            lines.append(f"budget {_fmt(b['budget'])}: spend {_fmt(b['spend'])} (dual price "
                         f"{_fmt(b['dual_price'])}{'' if b['feasible'] else ', INFEASIBLE'})")
        shares = ", ".join(f"{m} {s:.1%}" for m, s in d["share_per_model"].items() if s)
        lines.append(f"share: {shares}")
        return "\n".join(lines)


def describe_fitting(router: dict) -> str:
    """One line: what the router was fitted on (here, or as its saved record says)."""
    fitted, record = router.get("fit"), router.get("provenance")
    if fitted:
        part = ("the train part" if fitted["fit_part"] == "train"
                else "every part (train and test: --fit-part all)")
        return (f"router fitted here on {part} of {fitted['data']} (query split, seed "
                f"{fitted['seed']}; {fitted['fit_queries']} queries, hyper-parameters on "
                f"{fitted['validation_queries']} validation queries)")
    if record:
        split = (f"{record['split']} split, seed {record['seed']}, " if record.get("split")
                 else "")
        return (f"router fitted on {record['data']} ({split}{'/'.join(record['parts'])} "
                f"parts: {record['queries']} queries)")
    return "router: no record of what it was fitted on"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"
