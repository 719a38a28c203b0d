"""SMOOTHIE-GLOBAL / -LOCAL: the triplet estimator, label-freeness, modes, and the harness.

Real routerbench responses for everything except the analytic estimator test, which needs
outputs drawn with known noise levels around a hidden truth (the one place synthetic inputs
are what is asked for).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import spearmanr

from capsat.cli import main as cli_main
from capsat.evaluation import evaluate
from capsat.routers import Queries, Router, get_router_class, make_router
from capsat.routers.smoothie.router import quality_scores, triplet_squared_errors
from data_builders import DataError
from data_builders.experiment import restrict
from data_builders.outcomes import OutcomeTable
from data_builders.sources import load_outcomes

TASKS = ("arc-challenge", "mbpp", "winogrande")


@pytest.fixture(scope="module")
def routerbench_small():
    """Real routerbench outcomes and responses: 10 queries per task x all 11 models."""
    table = load_outcomes("routerbench").complete()
    ids = [q for task in TASKS for q in table.queries.index[table.queries["task"] == task][:10]]
    return table.subset(ids)


def without_scores(table: OutcomeTable) -> OutcomeTable:
    """The same table with every score hidden (NaN): what a label-free router must not miss."""
    hidden = table.scores.copy()
    hidden.loc[:, :] = np.nan
    return OutcomeTable(table.name, table.queries, hidden, table.costs, table.responses,
                        table.cost_unit, table.model_info, table.provenance)


# ------------------------------------------------------------------ estimator
def test_triplet_estimator_recovers_known_noise_levels():
    """Outputs = hidden truth + isotropic Gaussian noise of known scale: the estimate of
    E||lambda_i - lambda*||^2 is d * sigma_i^2, so the noise ranking comes back exactly."""
    rng = np.random.default_rng(0)
    n, d = 3000, 32
    sigmas = np.array([0.30, 0.05, 0.60, 0.15, 0.45, 0.10])  # deliberately out of order
    truth = rng.normal(size=(n, 1, d))
    outputs = truth + sigmas[None, :, None] * rng.normal(size=(n, len(sigmas), d))
    estimate = triplet_squared_errors(outputs).mean(axis=0)
    np.testing.assert_allclose(estimate, d * sigmas ** 2, rtol=0.05, atol=0.02)
    assert list(np.argsort(estimate)) == list(np.argsort(sigmas))
    scores = quality_scores(estimate)
    assert list(np.argsort(-scores)) == list(np.argsort(sigmas))  # best = least noisy


def test_closed_form_is_the_mean_of_all_triplet_estimates():
    rng = np.random.default_rng(1)
    outputs = rng.normal(size=(5, 4, 7))
    sq = lambda a, b: ((a - b) ** 2).sum(axis=-1)
    m = outputs.shape[1]
    brute = np.zeros((5, m))
    for i in range(m):
        others = [j for j in range(m) if j != i]
        brute[:, i] = np.mean([(sq(outputs[:, i], outputs[:, j]) + sq(outputs[:, i], outputs[:, k])
                                - sq(outputs[:, j], outputs[:, k])) / 2
                               for j, k in itertools.combinations(others, 2)], axis=0)
    np.testing.assert_allclose(triplet_squared_errors(outputs), brute, atol=1e-12)
    with pytest.raises(ValueError, match="at least 3"):
        triplet_squared_errors(outputs[:, :2])


# ------------------------------------------------------------ real responses
def test_registered_label_free_and_scores_are_order_preserving(routerbench_small):
    assert get_router_class("smoothie_global").label_free
    assert get_router_class("smoothie_local").label_free
    assert not get_router_class("knn").label_free
    router = make_router("smoothie_local", k=5).fit(routerbench_small)
    errors = router.squared_errors(routerbench_small)
    probs = router.predict_proba(routerbench_small)
    assert ((errors >= -2) & (errors <= 4)).all()
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(probs, (4 - errors) / 6)
    np.testing.assert_array_equal(probs.argmax(axis=1), errors.argmin(axis=1))


@pytest.mark.parametrize("name", ["smoothie_global", "smoothie_local"])
@pytest.mark.parametrize("mode", ["transductive", "inductive"])
def test_fit_never_reads_the_labels(routerbench_small, name, mode):
    train = routerbench_small.subset(routerbench_small.query_ids[::2])
    test = routerbench_small.subset(routerbench_small.query_ids[1::2])
    with_labels = make_router(name, mode=mode).fit(train, train)
    blind = make_router(name, mode=mode).fit(without_scores(train), without_scores(train))
    np.testing.assert_array_equal(with_labels.predict_proba(test), blind.predict_proba(test))
    if mode == "transductive":  # the scores come from the outputs: swapping them matters
        swapped = test.responses.copy()
        swapped[:] = test.responses.to_numpy()[:, ::-1]
        scrambled = Queries(test.texts, test.query_ids, test.tasks, responses=swapped)
        assert not np.allclose(with_labels.predict_proba(scrambled),
                               with_labels.predict_proba(test))


def test_global_is_one_score_per_task_and_per_task_estimates(routerbench_small):
    router = make_router("smoothie_global").fit(routerbench_small)
    probs = router.predict_proba(routerbench_small)
    tasks = np.array(routerbench_small.tasks)
    for task in TASKS:
        rows = probs[tasks == task]
        np.testing.assert_array_equal(rows, np.repeat(rows[:1], len(rows), axis=0))
        # Per task: scoring the task alone gives the same scores as scoring it in the mix.
        alone = routerbench_small.subset(list(routerbench_small.queries.index[tasks == task]))
        np.testing.assert_allclose(router.predict_proba(alone)[0], rows[0], atol=1e-12)
    assert not np.allclose(probs[tasks == "mbpp"][0], probs[tasks == "winogrande"][0])


def test_global_ranking_tracks_true_accuracy(routerbench_small):
    """No label is used, yet over the 30 real queries the models GLOBAL scores higher are the
    more accurate ones (Spearman over the 11 models; 0.60 with the embedded MiniLM)."""
    router = make_router("smoothie_global").fit(routerbench_small)
    blind = Queries(routerbench_small.texts, responses=routerbench_small.responses)  # no tasks
    scores = router.predict_proba(blind)[0]
    accuracy = routerbench_small.scores.mean().to_numpy()
    assert spearmanr(scores, accuracy).statistic > 0.4


def test_local_limits(routerbench_small):
    """k = the whole batch with equal weights is GLOBAL without tasks; k = 1 is each query's
    own estimate; a kernel bandwidth only reweights the same neighbours."""
    n = len(routerbench_small)
    no_tasks = Queries(routerbench_small.texts, routerbench_small.query_ids,
                       responses=routerbench_small.responses)
    glob = make_router("smoothie_global").fit(routerbench_small)
    wide = make_router("smoothie_local", k=n).fit(routerbench_small)
    np.testing.assert_allclose(wide.squared_errors(no_tasks), glob.squared_errors(no_tasks),
                               atol=1e-12)
    own = make_router("smoothie_local", k=1).fit(routerbench_small)
    np.testing.assert_allclose(own.squared_errors(no_tasks),
                               own.sample_squared_errors(no_tasks), atol=1e-12)
    kernel = make_router("smoothie_local", k=n, bandwidth=0.05).fit(routerbench_small)
    smoothed = kernel.squared_errors(no_tasks)
    assert not np.allclose(smoothed, wide.squared_errors(no_tasks))
    per_sample = own.sample_squared_errors(no_tasks)
    assert (smoothed >= per_sample.min(axis=0) - 1e-12).all()  # a weighted mean of them
    assert (smoothed <= per_sample.max(axis=0) + 1e-12).all()


def test_missing_responses_are_clear_errors(routerbench_small):
    router = make_router("smoothie_global").fit(routerbench_small)
    with pytest.raises(DataError, match="carry no responses"):
        router.predict_proba(routerbench_small.texts)
    responses = routerbench_small.responses.copy()
    responses.iloc[3, 2] = None
    gap = Queries(routerbench_small.texts, routerbench_small.query_ids, responses=responses)
    with pytest.raises(DataError) as err:
        router.predict_proba(gap)
    assert routerbench_small.query_ids[3] in str(err.value)
    assert routerbench_small.models[2] in str(err.value) and err.value.field == "response"
    with pytest.raises(DataError, match="at least 3"):
        make_router("smoothie_global").fit(
            routerbench_small.subset(models=routerbench_small.models[:2]))
    # Inductive mode learned from the training outputs: new queries need none.
    inductive = make_router("smoothie_local", mode="inductive").fit(routerbench_small)
    assert inductive.predict_proba(routerbench_small.texts[:4]).shape == (4, 11)


@pytest.mark.parametrize("name", ["smoothie_global", "smoothie_local"])
@pytest.mark.parametrize("mode", ["transductive", "inductive"])
def test_save_load_round_trip(routerbench_small, tmp_path, name, mode):
    router = make_router(name, mode=mode).fit(routerbench_small)
    router.save(tmp_path / "r")
    loaded = Router.load(tmp_path / "r")
    assert type(loaded) is type(router) and loaded.config == router.config
    np.testing.assert_array_equal(loaded.predict_proba(routerbench_small),
                                  router.predict_proba(routerbench_small))
    if mode == "inductive":
        (tmp_path / "r" / "state.safetensors").unlink()
        with pytest.raises(DataError, match="must hold arrays"):
            Router.load(tmp_path / "r")


def test_user_file_with_a_response_column_per_model(routerbench_small, tmp_path):
    """A user's wide CSV with ``<model>|response`` columns feeds SMOOTHIE like the shipped set."""
    wide = routerbench_small.queries.reset_index()
    for model in routerbench_small.models:
        wide[model] = routerbench_small.scores[model].to_numpy()
        wide[model + "|response"] = routerbench_small.responses[model].to_numpy()
    path = tmp_path / "mine.csv"
    wide.to_csv(path, index=False)
    mine = load_outcomes(path)
    router = make_router("smoothie_global").fit(mine)
    np.testing.assert_array_equal(router.predict_proba(mine),
                                  router.predict_proba(routerbench_small))


# ------------------------------------------------------------------- harness
def test_eval_with_task_filter_beside_references(routerbench_small, capsys):
    result = evaluate(routerbench_small, "query",
                      "random,best_single,oracle,smoothie_global,smoothie_local",
                      tasks=["arc-challenge", "winogrande"], seed=0, plots=False)
    assert set(result.routers) == {"random", "best_single", "oracle", "smoothie_global",
                                   "smoothie_local"}
    assert set(result.routers["smoothie_global"]["per_task"]) <= {"arc-challenge", "winogrande"}
    assert sum(result.split[f"{part}_queries"] for part in ("train", "validation", "test")) == 20
    table, notes = restrict(routerbench_small, tasks=["mbpp"])
    assert set(table.tasks) == {"mbpp"} and len(table) == 10 and "mbpp" in notes[0]
    with pytest.raises(DataError, match="no-such-task") as err:
        restrict(routerbench_small, tasks=["mbpp", "no-such-task"])
    assert err.value.field == "task"
    code = cli_main(["eval", "--data", "routerbench", "--routers", "random",
                     "--tasks", "mbpp,no-such-task", "--no-plots"])
    assert code == 2 and "no-such-task" in capsys.readouterr().err
