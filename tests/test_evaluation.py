"""Metrics, the comparison harness and the CLI, on real MMLU-Pro outcomes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from capsat.cli import main as cli_main
from capsat.evaluation import METRICS, evaluate, parse_router_list
from capsat.evaluation import metrics as M


@pytest.fixture(scope="module")
def scores(mmlu_small):
    return mmlu_small.scores.to_numpy(dtype=float)


def test_routed_accuracy_of_oracle_and_constant_probabilities(scores):
    oracle = M.routed_accuracy(scores, scores)
    assert oracle == pytest.approx(scores.max(axis=1).mean())
    prior = np.tile(scores.mean(axis=0), (len(scores), 1))
    best = int(np.argmax(scores.mean(axis=0)))
    assert M.routed_accuracy(prior, scores) == pytest.approx(scores[:, best].mean())


def test_auc_log_loss_ece_behave(scores):
    assert M.auc(scores, scores) == pytest.approx(1.0)
    assert M.auc(1 - scores, scores) == pytest.approx(0.0)
    noisy = np.clip(scores * 0.6 + 0.2, 0, 1)
    assert M.log_loss(noisy, scores) < M.log_loss(1 - noisy, scores)
    # A constant prediction equal to the overall mean is perfectly calibrated in aggregate.
    constant = np.full_like(scores, scores.mean())
    assert M.ece(constant, scores) == pytest.approx(0.0, abs=1e-12)
    assert M.ece(np.full_like(scores, 0.99), scores) == pytest.approx(0.99 - scores.mean())
    assert np.isnan(M.auc(np.ones((3, 2)) / 2, np.ones((3, 2))))


def test_gap_closed_endpoints():
    assert M.gap_closed(0.5, 0.5, 0.9) == 0.0
    assert M.gap_closed(0.9, 0.5, 0.9) == 1.0
    assert np.isnan(M.gap_closed(0.5, 0.5, 0.5))


def test_cost_curve_spans_cheapest_to_most_accurate(scores):
    rng = np.random.default_rng(0)
    costs = np.tile(np.array([1.0, 2.0, 4.0, 8.0, 16.0]), (len(scores), 1))
    costs *= rng.uniform(0.9, 1.1, costs.shape)
    probs = np.tile(scores.mean(axis=0), (len(scores), 1))
    curve = M.cost_curve(probs, scores, costs, costs.mean(axis=0))
    cheapest = int(np.argmin(costs.mean(axis=0)))
    # At the far cost-averse end the router always takes the cheapest model.
    assert curve[0, 0] == pytest.approx(costs[:, cheapest].mean())
    assert curve[:, 1].max() == pytest.approx(M.routed_accuracy(probs, scores))
    target = curve[:, 1].max()
    assert M.cost_to_reach(curve, target) == pytest.approx(curve[curve[:, 1] >= target, 0].min())
    assert M.cost_to_reach(curve, 2.0) is None
    area = M.cost_curve_area(curve, costs.mean(axis=0).min(), costs.mean(axis=0).max())
    assert 0.0 < area <= target


def test_metric_registry_lists_help():
    assert {"routed_accuracy", "auc", "log_loss", "ece"} <= set(METRICS)
    assert all(m.help for m in METRICS.values())
    with pytest.raises(ValueError):
        M.register_metric("auc", "twice")(lambda **_: 0.0)


def test_router_list_parsing():
    assert [s.name for s in parse_router_list("knn, oracle")] == ["knn", "oracle"]
    with pytest.raises(KeyError, match="unknown router"):
        parse_router_list("knn,nope")


def test_evaluate_reference_values_and_outputs(mmlu_small, tmp_path):
    result = evaluate(mmlu_small, "query", "random,best_single,oracle", seed=0,
                      out_dir=tmp_path)
    ref = result.reference
    assert ref["random"] <= ref["oracle"] and ref["best_single"] <= ref["oracle"]
    assert result.routers["oracle"]["routed_accuracy"] == pytest.approx(ref["oracle"])
    assert result.routers["oracle"]["gap_closed"] == pytest.approx(1.0)
    assert result.routers["best_single"]["routed_accuracy"] == pytest.approx(ref["best_single"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["routers"]) == {"random", "best_single", "oracle"}
    assert saved["split"]["test_queries"] == result.split["test_queries"] > 0
    for metric in ("routed_accuracy", "gap_closed", "auc", "log_loss", "ece"):
        assert metric in saved["routers"]["best_single"]
    tasks = set(mmlu_small.tasks)
    assert set(saved["routers"]["random"]["per_task"]) <= tasks
    assert (tmp_path / "per_task_accuracy.png").stat().st_size > 1000
    # MMLU-Pro carries output length as its cost unit, so the cost plot is drawn too.
    assert (tmp_path / "accuracy_vs_cost.png").stat().st_size > 1000


def test_evaluate_is_deterministic_and_seeded(mmlu_small):
    timing = {"fit_seconds", "predict_seconds", "queries_per_second"}

    def metrics(result):
        return {name: {k: v for k, v in row.items() if k not in timing}
                for name, row in result.routers.items()}

    a = evaluate(mmlu_small, "query", "random,best_single", seed=3)
    b = evaluate(mmlu_small, "query", "random,best_single", seed=3)
    c = evaluate(mmlu_small, "query", "random,best_single", seed=4)
    assert metrics(a) == metrics(b)
    assert metrics(a) != metrics(c)


def test_cli_ls_lists_registered_names(capsys):
    assert cli_main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ("random", "best_single", "oracle", "routed_accuracy", "mmlu_pro"):
        assert name in out


def test_cli_eval_unknown_model_is_a_clear_error(capsys):
    code = cli_main(["eval", "--data", "mmlu_pro", "--routers", "random",
                     "--models", "gemma-7b,no-such-model", "--no-plots"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "model" in err


def test_cli_eval_missing_file_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    assert cli_main(["eval", "--data", str(missing), "--routers", "random"]) == 2
    assert str(missing) in capsys.readouterr().err
