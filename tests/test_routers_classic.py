"""The classic routers (knn, kmeans, classifier, multilabel) on real MMLU-Pro outcomes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from capsat.routers import Queries, Router, make_router
from capsat.routers.baselines.router import BestSingleRouter
from capsat.routers.classifier.router import ClassifierRouter
from capsat.routers.common import masked_log_loss
from data_builders.embeddings import Embedder
from data_builders.errors import DataError

NAMES = ["knn", "kmeans", "classifier", "multilabel"]
# Small settings so the whole file stays fast; the grids still have several values.
FAST = {"kmeans": {"n_clusters_grid": [1, 4, 16]},
        "classifier": {"C_grid": [0.1, 1.0, 10.0]},
        "multilabel": {"dim": 32, "max_epochs": 40, "patience": 5}}


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """The multilabel MLP is tiny here: with more threads than free cores, torch's thread
    pool spins and an epoch takes 100x longer on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split(mmlu_small):
    """Seeded 60/20/20 query split of the 240 questions, and every question's embedding."""
    ids = np.array(mmlu_small.query_ids)
    order = np.random.default_rng(7).permutation(len(ids))
    n_train, n_val = 144, 48
    parts = {"train": ids[order[:n_train]], "validation": ids[order[n_train:n_train + n_val]],
             "test": ids[order[n_train + n_val:]]}
    tables = {name: mmlu_small.subset(list(part)) for name, part in parts.items()}
    embedder = Embedder(progress=False)
    embeddings = {name: embedder.encode(table.texts) for name, table in tables.items()}
    return tables, embeddings


def fit(name, split, validation=True, **config):
    tables, emb = split
    router = make_router(name, **{**FAST.get(name, {}), **config})
    return router.fit(tables["train"], tables["validation"] if validation else None,
                      {"train": emb["train"], "validation": emb["validation"]})


def held_out_queries(split, part="test"):
    tables, emb = split
    return Queries.from_table(tables[part], emb[part])


@pytest.fixture(scope="module")
def fitted(split):
    return {name: fit(name, split) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_probabilities_have_the_right_shape_and_depend_on_the_query(fitted, split, name):
    router = fitted[name]
    probs = router.predict_proba(held_out_queries(split))
    assert probs.shape == (48, 5)
    assert np.all((probs > 0) & (probs < 1))
    # Query-aware: some model's probability varies across the test questions.
    assert probs.std(axis=0).max() > 1e-3
    two = router.predict_proba(held_out_queries(split), models=[router.models[3], router.models[0]])
    np.testing.assert_array_equal(two, probs[:, [3, 0]])


@pytest.mark.parametrize("name", NAMES)
def test_texts_queries_and_tables_give_the_same_probabilities(fitted, split, name):
    tables, _ = split
    router = fitted[name]
    from_queries = router.predict_proba(held_out_queries(split))
    np.testing.assert_allclose(router.predict_proba(tables["test"].texts), from_queries,
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(router.predict_proba(tables["test"]), from_queries,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_fitting_is_deterministic_and_works_without_validation(split, name):
    a = fit(name, split, validation=False).predict_proba(held_out_queries(split))
    b = fit(name, split, validation=False).predict_proba(held_out_queries(split))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (48, 5) and np.all((a >= 0) & (a <= 1))


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(fitted, split, name, tmp_path):
    router = fitted[name]
    router.save(tmp_path / name)
    loaded = Router.load(tmp_path / name)
    assert type(loaded) is type(router) and loaded.models == router.models
    assert loaded.config == router.config
    assert loaded.state_json() == router.state_json()
    np.testing.assert_array_equal(loaded.predict_proba(held_out_queries(split)),
                                  router.predict_proba(held_out_queries(split)))


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip_and_help(fitted, name):
    config = fitted[name].config
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert all(text for text in type(config).help().values())


@pytest.mark.parametrize("name", NAMES)
def test_unknown_model_is_a_data_error(fitted, split, name):
    with pytest.raises(DataError, match="no-such-model"):
        fitted[name].predict_proba(held_out_queries(split), models=["no-such-model"])


@pytest.mark.parametrize("name", NAMES)
def test_missing_saved_values_are_errors(fitted, name, tmp_path):
    directory = fitted[name].save(tmp_path / name)
    path = directory / "router.json"
    meta = json.loads(path.read_text())
    field = sorted(meta["config"])[0]
    without_config = {**meta, "config": {k: v for k, v in meta["config"].items() if k != field}}
    path.write_text(json.dumps(without_config))
    with pytest.raises(ValueError, match=field):
        Router.load(directory)
    state_key = "selected_on"  # every classic router records how it chose its settings
    without_state = {**meta, "state": {k: v for k, v in meta["state"].items() if k != state_key}}
    path.write_text(json.dumps(without_state))
    with pytest.raises(DataError, match=state_key):
        Router.load(directory)


@pytest.mark.parametrize("name", NAMES)
def test_embeddings_of_another_dimension_are_rejected(fitted, split, name):
    queries = held_out_queries(split)
    queries.embeddings = queries.embeddings[:, :100]
    with pytest.raises(ValueError, match="dimension"):
        fitted[name].predict_proba(queries)


# ------------------------------------------------------------------------- knn


def test_knn_with_one_neighbour_reproduces_training_labels(split):
    tables, emb = split
    router = fit("knn", split, validation=False, k=1, prior_weight=0.1)
    probs = router.predict_proba(Queries.from_table(tables["train"], emb["train"]))
    labels = tables["train"].scores.to_numpy()
    # Questions that share a long passage are cut to the same encoder window and so have the
    # same embedding; only a question with an embedding of its own is its unique neighbour.
    twins = (emb["train"] @ emb["train"].T > 1 - 1e-6).sum(axis=1) > 1
    assert twins.sum() < 10
    np.testing.assert_array_equal(probs[~twins] > 0.5, labels[~twins] == 1)
    assert np.all((probs > 0) & (probs < 1))


def test_knn_nearest_k_are_a_prefix_of_the_nearest_k_max(split, fitted):
    # On the training queries themselves, so twin embeddings tie at the boundary.
    tables, emb = split
    queries = Queries.from_table(tables["train"], emb["train"])
    sums, counts = fitted["knn"]._neighbour_sums(queries, 40)
    for k in (1, 2, 3, 7, 40):
        direct_sums, direct_counts = fitted["knn"]._neighbour_sums(queries, k)
        np.testing.assert_array_equal(sums[:, k - 1], direct_sums[:, -1])
        np.testing.assert_array_equal(counts[:, k - 1], direct_counts[:, -1])


def test_knn_picks_from_the_grid_on_validation(split, fitted):
    tables, emb = split
    router = fitted["knn"]
    state = router.state_json()
    assert state["selected_on"] == "validation"
    assert router.k in router.config.k_grid
    assert router.prior_weight in router.config.prior_weight_grid
    # The prefix-mean search scores exactly what predict_proba returns for the chosen k.
    val = router.predict_proba(Queries.from_table(tables["validation"], emb["validation"]))
    assert state["validation_log_loss"] == pytest.approx(
        masked_log_loss(val, tables["validation"].scores.to_numpy()), rel=1e-9)
    # Validating on the training queries themselves rewards memorising: k=1, least shrinkage.
    on_train = make_router("knn").fit(tables["train"], tables["train"],
                                      {"train": emb["train"], "validation": emb["train"]})
    assert (on_train.k, on_train.prior_weight) == (1, min(router.config.prior_weight_grid))
    assert router.k > 1


# ---------------------------------------------------------------------- kmeans


def test_kmeans_with_one_cluster_is_the_prior(split):
    tables, _ = split
    router = fit("kmeans", split, validation=False, n_clusters=1)
    probs = router.predict_proba(held_out_queries(split))
    assert np.all(probs == probs[0])
    prior = BestSingleRouter().fit(tables["train"]).predict_proba(held_out_queries(split))
    np.testing.assert_allclose(probs, prior, atol=0.02)


def test_kmeans_picks_k_from_the_grid_on_validation(split, fitted):
    tables, emb = split
    router = fitted["kmeans"]
    assert router.state_json()["selected_on"] == "validation"
    assert router.n_clusters in router.config.n_clusters_grid
    on_train = make_router("kmeans", n_clusters_grid=[1, 64]).fit(
        tables["train"], tables["train"], {"train": emb["train"], "validation": emb["train"]})
    assert on_train.n_clusters == 64


# ------------------------------------------------------------------ classifier


def test_classifier_falls_back_to_a_constant_for_a_one_class_model(split):
    tables, emb = split
    train = tables["train"]
    model = "Meta-Llama-3_1-8B-Instruct"
    right = train.scores[model].to_numpy() == 1
    only_right = train.subset(list(np.array(train.query_ids)[right]))
    router = ClassifierRouter().fit(only_right, None, {"train": emb["train"][right]})
    assert router.constant_models == [model]
    probs = router.predict_proba(held_out_queries(split))
    column = router.models.index(model)
    n = int(right.sum())
    np.testing.assert_allclose(probs[:, column], (n + 1) / (n + 2))
    others = np.delete(probs, column, axis=1)
    assert others.std(axis=0).min() > 1e-3


def test_classifier_picks_c_per_model_on_validation(split, fitted):
    tables, emb = split
    router = fitted["classifier"]
    grid = router.config.C_grid
    assert router.state_json()["selected_on"] == "validation"
    assert all(c in grid for c in router.chosen_C)
    # On its own training queries the least regularised fit has the lowest log-loss.
    on_train = make_router("classifier", C_grid=grid).fit(
        tables["train"], tables["train"], {"train": emb["train"], "validation": emb["train"]})
    assert on_train.chosen_C == [max(grid)] * 5
    assert router.chosen_C != on_train.chosen_C


def test_classifier_treats_graded_scores_from_one_half_as_right(split):
    tables, emb = split
    train = tables["train"]
    halved = train.subset()
    halved.scores = train.scores * 0.5 + 0.25  # 0 -> 0.25 (wrong), 1 -> 0.75 (right)
    a = ClassifierRouter().fit(train, None, {"train": emb["train"]})
    b = ClassifierRouter().fit(halved, None, {"train": emb["train"]})
    np.testing.assert_allclose(a.coef, b.coef)


# ------------------------------------------------------------------ multilabel


def test_multilabel_stops_early_on_validation(split, fitted):
    router = fitted["multilabel"]
    state = router.state_json()
    epochs_run = len(state["train_losses"])
    assert len(state["validation_losses"]) == epochs_run
    assert 1 <= state["best_epoch"] <= epochs_run <= router.config.max_epochs
    assert epochs_run == state["best_epoch"] + router.config.patience \
        or epochs_run == router.config.max_epochs
    unvalidated = fit("multilabel", split, validation=False)
    assert len(unvalidated.state_json()["train_losses"]) == router.config.max_epochs
