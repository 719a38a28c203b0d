"""Metrics, the comparison harness and the CLI, on real MMLU-Pro outcomes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from capsat.cli import main as cli_main
from capsat.evaluation import METRICS, evaluate, format_table, parse_router_list
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
    # Results are keyed by label: two saved routers in folders of one name would collide.
    with pytest.raises(ValueError, match="capsat:best.*a/best, capsat:b/best"):
        parse_router_list("capsat:a/best,capsat:b/best")
    assert [s.label for s in parse_router_list("capsat:a/best,capsat:b/other")] == [
        "capsat:best", "capsat:other"]


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


def test_a_registered_metric_appears_in_results_and_tables(mmlu_small, tmp_path):
    """Item 10: the registry is the list the harness computes."""
    @M.register_metric("always_first_share", "share of queries routed to the first model",
                       column="first")
    def always_first_share(probs, scores, **_):
        return float((np.argmax(probs, axis=1) == 0).mean())

    try:
        result = evaluate(mmlu_small, "query", "random,best_single", out_dir=tmp_path,
                          plots=False)
        saved = json.loads((tmp_path / "results.json").read_text())
        for name in ("random", "best_single"):
            assert saved["routers"][name]["always_first_share"] == pytest.approx(
                result.routers[name]["always_first_share"])
        assert "first" in (tmp_path / "results.md").read_text().splitlines()[0]
    finally:
        del M.METRICS["always_first_share"]
    # Every registered metric that applies is in every row.
    row = result.routers["best_single"]
    assert {"routed_accuracy", "gap_closed", "gap_closed_per_task", "auc", "query_auc",
            "log_loss", "ece", "per_task", "routed_cost", "cost_curve_area",
            "cost_to_reach_best_single"} <= set(row)


def test_query_auc_ranks_candidates_within_each_query():
    scores = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 1, 0]], dtype=float)
    right = np.array([[0.9, 0.1, 0.2], [0.1, 0.8, 0.7], [0.5, 0.5, 0.5], [0.6, 0.9, 0.2]])
    assert M.query_auc(right, scores) == pytest.approx(1.0)  # the all-right query is left out
    assert M.query_auc(1 - right, scores) == pytest.approx(0.0)
    # A constant per-model prior ranks every query the same way, right or wrong.
    prior = np.tile([0.5, 0.6, 0.4], (4, 1))
    assert M.query_auc(prior, scores) == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_per_task_best_single_is_a_second_reference(mmlu_small):
    """Item 18: each task sent to its best model on train, beside the best single model."""
    from data_builders.experiment import prepare_experiment

    result = evaluate(mmlu_small, "query", "best_single,oracle", plots=False)
    ref = result.reference
    experiment = prepare_experiment(mmlu_small)
    train = experiment.train_of_test_models()
    test = experiment.table.subset(list(experiment.split.test))
    picks = {t: train.scores[train.queries["task"] == t].mean().idxmax()
             for t in set(test.tasks)}
    assert ref["per_task_best_models"] == picks
    by_hand = np.mean([test.scores.at[q, picks[t]] for q, t in zip(test.query_ids, test.tasks)])
    assert ref["per_task_best_single"] == pytest.approx(by_hand)
    assert ref["per_task_best_single"] >= ref["random"]
    row = result.routers["best_single"]
    assert row["gap_closed_per_task"] == pytest.approx(
        M.gap_closed(row["routed_accuracy"], ref["per_task_best_single"], ref["oracle"]))
    assert "per-task best single" in format_table(result)
    # The task oracle: each task to its best model on test (a ceiling, read on test labels).
    ceiling = np.mean([test.scores.loc[test.queries["task"] == t, list(experiment.split.test_models)]
                       .mean().max() * (test.queries["task"] == t).sum() for t in set(test.tasks)]
                      ) * len(set(test.tasks)) / len(test)
    assert ref["task_oracle"] == pytest.approx(ceiling)
    assert ref["per_task_best_single"] <= ref["task_oracle"] <= ref["oracle"]
    assert "task oracle" in format_table(result)


def test_paired_pooled_auc_bootstrap(mmlu_small):
    """The pooled AUC's paired bootstrap: with every query once it is the two AUCs'
    difference (ties counting half, as sklearn's); its interval holds that difference and is
    seeded; ``compare`` reports it for routers scored in the same run, not from JSON."""
    from sklearn.metrics import roc_auc_score

    from capsat.evaluation.compare import WeightedPooledAuc, compare, paired_auc_bootstrap

    rng = np.random.default_rng(0)
    right = rng.random((50, 4)) < 0.5
    tied = np.round(rng.random((50, 4)), 1)  # many ties
    assert WeightedPooledAuc(tied, right)(np.ones(50)) == pytest.approx(
        roc_auc_score(right.ravel(), tied.ravel()))
    weights = rng.integers(0, 3, 50).astype(float)  # a resample: queries 0, 1 or 2 times
    repeated = np.repeat(np.arange(50), weights.astype(int))
    assert WeightedPooledAuc(tied, right)(weights) == pytest.approx(
        roc_auc_score(right[repeated].ravel(), tied[repeated].ravel()))
    result = evaluate(mmlu_small, "query", "knn,aptitude_prior,oracle", plots=False)
    rows = compare(result, "knn", ["aptitude_prior", "best_single"], samples=200)
    auc = rows["aptitude_prior"]["auc"]
    expected = result.routers["knn"]["auc"] - result.routers["aptitude_prior"]["auc"]
    assert auc["difference"] == pytest.approx(expected)
    assert auc["low"] <= expected <= auc["high"] and auc["low"] < auc["high"]
    assert "auc" not in rows["best_single"]  # a reference, not a router
    again = paired_auc_bootstrap(result.probabilities["knn"],
                                 result.probabilities["aptitude_prior"], result.test_right,
                                 samples=200)
    assert (again["low"], again["high"]) == (auc["low"], auc["high"])
    from_json = compare(result.to_json(), "knn", ["aptitude_prior"], samples=200)
    assert "auc" not in from_json["aptitude_prior"]
    assert "probabilities" not in result.to_json()


def test_saved_routers_that_saw_the_test_part_are_refused(mmlu_small, tmp_path):
    """Item 2: every router records what it was fitted on; eval refuses overlap, and a router
    without a record unless the user overrides."""
    from capsat.routers import make_router

    everything = make_router("best_single").fit(mmlu_small, split=None)
    assert set(everything.fitted_on.query_ids) == set(mmlu_small.query_ids)
    everything.save(tmp_path / "leaky")
    meta = json.loads((tmp_path / "leaky" / "router.json").read_text())
    meta["fitted_on"] = None
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "router.json").write_text(json.dumps(meta))
    (tmp_path / "unknown" / "state.safetensors").write_bytes(
        (tmp_path / "leaky" / "state.safetensors").read_bytes())
    result = evaluate(mmlu_small, "query", f"best_single:{tmp_path / 'leaky'},"
                                           f"best_single:{tmp_path / 'unknown'}", plots=False)
    assert "was fitted on" in result.skipped["best_single:leaky"]
    assert "--allow-unknown-provenance" in result.skipped["best_single:unknown"]
    allowed = evaluate(mmlu_small, "query", f"best_single:{tmp_path / 'unknown'}", plots=False,
                       allow_unknown_provenance=True)
    assert "best_single:unknown" in allowed.routers


def test_the_two_way_bootstrap_counts_how_the_gain_varies_with_the_pool():
    """Resampling the candidate models as well as the queries: where every model gains
    alike, the standard error is about the queries-only one; where one model of eight
    carries the whole gain, it is over twice as large, and the resampled pools are
    drawn from the candidates with repeats. With every query and model once, it is the
    difference itself."""
    from capsat.evaluation.compare import paired_two_way_bootstrap, paired_weighted_bootstrap

    rng = np.random.default_rng(0)
    n, m = 400, 8
    noise = rng.normal(0.0, 1.0, (n, 1))
    alike = np.tile(0.2 + noise, (1, m))
    one_carries = np.zeros((n, m))
    one_carries[:, 3] = 1.6 + noise[:, 0] * m  # the same mean gain, all in model 3
    pools = []

    def pool_gain(gains):
        def of_columns(columns):
            pools.append(columns)
            per_query = gains[:, columns].mean(axis=1)
            return lambda w: float((w * per_query).sum() / w.sum())
        return of_columns

    zero = lambda columns: (lambda w: 0.0)  # noqa: E731
    queries_only = paired_weighted_bootstrap(pool_gain(alike)(np.arange(m)), lambda w: 0.0, n,
                                             samples=300)
    both = paired_two_way_bootstrap(pool_gain(alike), zero, n, m, samples=300)
    assert both["difference"] == pytest.approx(alike.mean())
    assert both["models"] == m and both["queries"] == n
    assert both["standard_error"] == pytest.approx(queries_only["standard_error"], rel=0.25)
    carried = paired_two_way_bootstrap(pool_gain(one_carries), zero, n, m, samples=300)
    assert carried["difference"] == pytest.approx(one_carries.mean())
    assert carried["standard_error"] > 2 * both["standard_error"]
    assert carried["low"] <= 0.0 < carried["high"]  # the gain is not shown for new models
    drawn = np.array(pools[2:])  # resampled pools (and the full ones, sorted too)
    assert all(len(c) == m and (np.diff(c) >= 0).all() for c in drawn)
    assert any(len(set(c)) < m for c in drawn) and drawn.min() >= 0 and drawn.max() < m
