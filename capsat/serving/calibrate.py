"""``capsat calibrate``: choose a policy's knob so that routing meets a target, on held-out rows.

RouteLLM's ``calibrate_threshold`` picks the threshold that sends a given share of calls to
the strong model. This is the same for N candidates and for cost:

- ``--target-share MODEL=S``: the knob whose share of MODEL on the *validation* part of the
  data's query split is closest to S (ties: the higher accuracy).
- ``--target-cost C``: the knob with the best validation accuracy among those whose mean cost
  per query is at most C.

Knobs: ``threshold`` (cheapest candidate with P >= T; T swept over the quantiles of the
validation probabilities) or ``tradeoff`` (max P - LAMBDA * cost; LAMBDA on a log grid scaled
by the spread of the costs). The router must not have seen the validation or the test rows
(``provenance.refusal``); a classic router given by name is fitted here on the train part
only. The chosen knob is then applied, unchanged, to the *test* part, whose realised share,
cost and accuracy are reported beside the target: the test part never chooses anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_builders.atomic import write_json
from data_builders.errors import DataError
from data_builders.experiment import prepare_experiment

from ..routers.base import help_field
from ..routers.provenance import refusal
from ..routing import prices as P
from ..routing.policies import Policy, choose

KINDS = ("threshold", "tradeoff")
GRID_POINTS = 400


@dataclass
class CalibrateConfig:
    router: str = help_field("", "saved router folder, 'default', a hub id, or a classic router "
                                 "name (fitted here on the train part of --data)")
    data: str = help_field("", "data set name or outcome file; calibrated on the validation "
                               "part of its query split, reported on the test part")
    target_share: str = help_field("", "MODEL=SHARE: the share of requests MODEL should get")
    target_cost: float = help_field(0.0, "the mean cost per request not to exceed (prices' unit)")
    policy_kind: str = help_field("threshold", "the knob to set: threshold or tradeoff")
    prices: str = help_field("", "JSON prices file (model -> cost per call, or token prices); "
                                 "default: the router's registry, else the data's mean costs")
    output_tokens: int = help_field(256, "assumed answer length, for token prices")
    seed: int = help_field(0, "seed of the query split")
    out: str = help_field("", "JSON file to write the chosen policy and the figures to")
    save_router: str = help_field("", "also save the router (e.g. one fitted here) to this "
                                      "folder, to serve it with the calibrated policy")


def parse_share(text: str) -> tuple[str, float]:
    model, equals, value = text.partition("=")
    try:
        share = float(value)
    except ValueError:
        share = math.nan
    if not equals or not model or not 0 <= share <= 1:
        raise DataError(f"expected MODEL=SHARE with SHARE in [0, 1], got {text!r}",
                        field="target_share")
    return model.strip(), share


def _router(config: CalibrateConfig):
    """(router, how it was obtained): classic names are fitted on the train part only,
    because the validation part is what calibration reads."""
    from ..routers import ROUTERS, get_router_class
    from ..routing.resolve import resolve_router

    if config.router in ROUTERS and not Path(config.router).is_dir() and not ROUTERS[
            config.router].trained_with:
        experiment = prepare_experiment(config.data, "query", seed=config.seed)
        router = get_router_class(config.router)()
        router.progress = False
        router.fit(experiment.table.subset(list(experiment.split.train)), split="query",
                   seed=config.seed)
        return router, f"{config.router} fitted here on the train part of {config.data}"
    return resolve_router(config.router, progress=False).router, f"loaded from {config.router}"


def _prices(config: CalibrateConfig, router, models, train) -> P.Prices:
    if config.prices:
        return P.from_file(config.prices, models, config.output_tokens)
    found = P.from_router(router, models, config.output_tokens) or P.from_table(
        train, models, config.output_tokens)
    if found is None:
        raise DataError("no prices: the router's registry has none and the data has neither "
                        "costs nor model-card prices; give --prices", field="prices")
    return found


def _grid(kind: str, probs: np.ndarray, costs: np.ndarray) -> list[float]:
    if kind == "threshold":
        values = np.quantile(probs, np.linspace(0, 1, GRID_POINTS))
        values = np.concatenate([[0.0], values, [1.0]])
    else:
        spread = float(np.ptp(costs)) or 1.0
        values = np.concatenate([[0.0], np.geomspace(1e-4, 1e3, GRID_POINTS) / spread])
    # Rounded as the policy string prints them, so the written policy is the one evaluated.
    return sorted({float(f"{v:.6g}") for v in values})


def evaluate(policy: Policy, probs: np.ndarray, costs: np.ndarray, scores: np.ndarray,
             models: list[str]) -> dict:
    picked = choose(policy, probs, costs)
    rows = np.arange(len(picked))
    shares = np.bincount(picked, minlength=len(models)) / len(picked)
    return {"policy": str(policy), "expected_accuracy": float(probs[rows, picked].mean()),
            "realised_accuracy": float(scores[rows, picked].mean()),
            "mean_cost": float(costs[rows, picked].mean()),
            "share": {m: float(s) for m, s in zip(models, shares)}}


def calibrate(config: CalibrateConfig) -> dict:
    if config.policy_kind not in KINDS:
        raise DataError(f"unknown policy kind {config.policy_kind!r}; known: {list(KINDS)}",
                        field="policy_kind")
    if bool(config.target_share) == bool(config.target_cost):
        raise DataError("give exactly one of --target-share MODEL=SHARE and --target-cost C",
                        field="target_share")
    router, origin = _router(config)
    models = list(router.models)
    experiment = prepare_experiment(config.data, "query", models=models, seed=config.seed)
    train, validation, test = experiment.parts()
    for part, table in (("validation", validation), ("test", test)):
        why = refusal(router, table.query_ids, table.texts, what=f"the {part} rows")
        if why:
            raise DataError(f"the router {why}", field="router")
    target_model, target_share = parse_share(config.target_share) if config.target_share \
        else (None, None)
    if target_model is not None and target_model not in models:
        raise DataError(f"{target_model!r} is not a candidate of the router ({models})",
                        field="target_share")
    prices = _prices(config, router, models, train)

    def arrays(table):
        probs = router.predict_proba(table.texts, models)
        costs = prices.matrix(np.array([len(t) for t in table.texts], dtype=float))
        return probs, costs, table.scores[models].to_numpy(dtype=float)

    val = arrays(validation)
    candidates = [evaluate(Policy(config.policy_kind, v), *val, models)
                  for v in _grid(config.policy_kind, val[0], val[1])]
    if target_model is not None:
        best = min(candidates, key=lambda c: (abs(c["share"][target_model] - target_share),
                                              -c["realised_accuracy"]))
    else:
        within = [c for c in candidates if c["mean_cost"] <= config.target_cost]
        if not within:
            cheapest = min(c["mean_cost"] for c in candidates)
            raise DataError(f"no {config.policy_kind} setting keeps the mean cost at "
                            f"{config.target_cost:g}; the lowest is {cheapest:.6g}",
                            field="target_cost")
        best = max(within, key=lambda c: (c["realised_accuracy"], -c["mean_cost"]))
    policy = Policy.parse(best["policy"])
    on_test = evaluate(policy, *arrays(test), models)
    result = {"policy": str(policy),
              "serve_model": f"capsat:{policy.kind}={policy.value:g}",
              "router": origin, "data": experiment.table.name, "seed": config.seed,
              "prices": prices.source, "cost_unit": prices.unit,
              "target": ({"share": {target_model: target_share}} if target_model else
                         {"mean_cost": config.target_cost}),
              "validation": {"rows": len(validation), **best},
              "test": {"rows": len(test), **on_test}}
    if config.save_router:
        router.save(config.save_router)
        result["saved_router"] = config.save_router
    if config.out:
        write_json(config.out, result)
    return result


def format_result(result: dict) -> str:
    val, test = result["validation"], result["test"]
    lines = [f"policy {result['policy']} (serve: model=\"{result['serve_model']}\"); "
             f"{result['router']}; prices: {result['prices']} ({result['cost_unit']})",
             f"{'':<30}{'validation':>12}{'test':>12}",
             f"{'rows':<30}{val['rows']:>12}{test['rows']:>12}",
             f"{'expected accuracy':<30}{val['expected_accuracy']:>12.4f}"
             f"{test['expected_accuracy']:>12.4f}",
             f"{'realised accuracy':<30}{val['realised_accuracy']:>12.4f}"
             f"{test['realised_accuracy']:>12.4f}",
             f"{'mean cost':<30}{val['mean_cost']:>12.6g}{test['mean_cost']:>12.6g}"]
    target = result["target"]
    if "share" in target:
        (model, share), = target["share"].items()
        lines.append(f"{'share ' + model:<30}{val['share'][model]:>12.4f}"
                     f"{test['share'][model]:>12.4f}   target {share:.4f}")
    else:
        lines.append(f"{'target mean cost':<30}{target['mean_cost']:>12.6g}")
    lines.append("share per model (validation / test):")
    for model, share in sorted(val["share"].items(), key=lambda kv: -kv[1]):
        if share or test["share"][model]:
            lines.append(f"  {model:<28}{share:>12.4f}{test['share'][model]:>12.4f}")
    return "\n".join(lines)
