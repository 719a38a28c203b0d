"""The neural routers (irt, mf) on real MMLU-Pro outcomes: 240 questions x 5 small models."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from capsat.routers import Queries, Router, make_router
from capsat.routers.embedding_network import router as neural
from data_builders.embeddings import Embedder
from data_builders.errors import DataError

ROUTERS = ["irt", "mf"]
# Small and quick; early stopping still decides the epoch.
FAST = {"dim": 8, "learning_rate": 1e-2, "max_epochs": 150, "patience": 5}


def bce(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy over the observed cells."""
    mask = ~np.isnan(targets)
    p = np.clip(probs[mask], 1e-7, 1 - 1e-7)
    y = targets[mask]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@pytest.fixture(scope="module")
def split(mmlu_small):
    """Seeded train / validation / test split with precomputed embeddings."""
    embeddings = Embedder(progress=False).encode(mmlu_small.texts)
    order = np.random.default_rng(7).permutation(len(mmlu_small))
    parts = {"train": order[:150], "validation": order[150:190], "test": order[190:]}
    ids = mmlu_small.query_ids
    return {name: (mmlu_small.subset([ids[i] for i in rows]), embeddings[rows])
            for name, rows in parts.items()}


def fit(name, split, train=None, validation=None, **overrides):
    train = split["train"][0] if train is None else train
    validation = split["validation"][0] if validation is None else validation
    router = make_router(name, **{**FAST, **overrides})
    return router.fit(train, validation, {"train": split["train"][1],
                                          "validation": split["validation"][1]})


def queries(split, part):
    table, embeddings = split[part]
    return Queries.from_table(table, embeddings)


@pytest.fixture(scope="module")
def trained(split):
    """One router of each kind fitted with the FAST settings, shared by the tests that only
    read it."""
    return {name: fit(name, split) for name in ROUTERS}


@pytest.fixture(params=ROUTERS)
def fitted(request, trained):
    return trained[request.param]


def test_shape_range_and_query_dependence(fitted, split):
    table = split["test"][0]
    probs = fitted.predict_proba(queries(split, "test"))
    assert probs.shape == (len(table), 5)
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    # A query-aware router: each model's probability varies across queries.
    assert (probs.std(axis=0) > 1e-3).all()
    picked = fitted.predict_proba(queries(split, "test"), [table.models[3], table.models[0]])
    np.testing.assert_array_equal(picked, probs[:, [3, 0]])


def test_training_lowers_training_loss(fitted, split):
    table = split["train"][0]
    untrained = fit(fitted.name, split, max_epochs=0)
    assert untrained.fit_result.train_losses == []
    before = bce(untrained.predict_proba(queries(split, "train")), table.scores.to_numpy())
    after = bce(fitted.predict_proba(queries(split, "train")), table.scores.to_numpy())
    assert after < before - 0.01


def test_early_stopping_restores_best_validation_epoch(fitted, split):
    result = fitted.fit_result
    losses = result.validation_losses
    assert len(losses) < FAST["max_epochs"], "early stopping never triggered"
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert len(losses) == result.best_epoch + FAST["patience"]
    # The kept weights are those of the best epoch, not the last one.
    table = split["validation"][0]
    restored = bce(fitted.predict_proba(queries(split, "validation")), table.scores.to_numpy())
    assert restored == pytest.approx(min(losses), rel=1e-4)
    assert restored < losses[-1]


def test_seeded_and_deterministic(fitted, split):
    test = queries(split, "test")
    first = fitted.predict_proba(test)
    again = fit(fitted.name, split, seed=fitted.config.seed).predict_proba(test)
    other = fit(fitted.name, split, seed=fitted.config.seed + 1).predict_proba(test)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_save_load_gives_identical_probabilities(fitted, split, tmp_path):
    fitted.save(tmp_path / "router")
    loaded = Router.load(tmp_path / "router")
    assert type(loaded) is type(fitted) and loaded.models == fitted.models
    assert loaded.fit_result == fitted.fit_result
    test = queries(split, "test")
    np.testing.assert_array_equal(loaded.predict_proba(test), fitted.predict_proba(test))
    if fitted.name == "irt":
        assert loaded.abilities().equals(fitted.abilities())


def test_saved_state_lacking_a_key_is_an_error(fitted, tmp_path):
    directory = fitted.save(tmp_path / "router")
    meta = json.loads((directory / "router.json").read_text())
    del meta["state"]["dim"]
    (directory / "router.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="dim"):
        Router.load(directory)


@pytest.mark.parametrize("name", ROUTERS)
def test_graded_and_missing_targets_train(name, split):
    rng = np.random.default_rng(0)

    def graded_with_gaps(table):
        # Real outcomes, softened into (0, 1), with a fifth of the cells unrecorded.
        scores = 0.1 + 0.8 * table.scores
        scores = scores.mask(rng.random(scores.shape) < 0.2)
        return dataclasses.replace(table, scores=scores)

    train = graded_with_gaps(split["train"][0])
    validation = graded_with_gaps(split["validation"][0])
    router = fit(name, split, train=train, validation=validation)
    assert np.isfinite(router.fit_result.train_losses).all()
    assert np.isfinite(router.fit_result.validation_losses).all()
    probs = router.predict_proba(queries(split, "test"))
    assert np.isfinite(probs).all()
    # Soft targets are fitted as soft: no prediction reaches the 0/1 the graded data never has.
    assert probs.min() > 0.02 and probs.max() < 0.98


def test_masked_bce_ignores_missing_cells():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=generator, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, float("nan"), 0.3]] * 6)
    targets[2, 0] = float("nan")
    loss = neural.masked_bce(logits, targets)
    observed = ~torch.isnan(targets)
    p = torch.sigmoid(logits.detach())[observed]
    y = targets[observed]
    by_hand = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert loss.item() == pytest.approx(float(by_hand), rel=1e-5)
    loss.backward()
    assert (logits.grad[~observed] == 0).all() and (logits.grad[observed] != 0).all()
    # Any logit at a missing cell leaves the loss unchanged.
    moved = logits.detach().clone()
    moved[~observed] = 50.0
    assert float(neural.masked_bce(moved, targets)) == pytest.approx(loss.item(), rel=1e-6)
    nothing = torch.full((2, 3), float("nan"))
    assert float(neural.masked_bce(torch.zeros(2, 3), nothing)) == 0.0


def test_irt_interpretable_parameters(trained, split):
    router = trained["irt"]
    train, _ = split["train"]
    abilities = router.abilities()
    assert list(abilities.index) == train.models
    assert list(abilities.columns) == [f"theta_{k}" for k in range(8)] + [
        "ability_norm", "mean_probability"]
    thetas = abilities.filter(like="theta_").to_numpy()
    np.testing.assert_allclose(thetas.sum(axis=0), 0.0, atol=1e-5)  # relative to the pool
    train_probs = router.predict_proba(queries(split, "train"))
    np.testing.assert_allclose(abilities["mean_probability"], train_probs.mean(axis=0),
                               rtol=1e-6)

    params = router.query_parameters(queries(split, "train"))
    assert list(params.index) == train.query_ids
    assert list(params.columns) == ["difficulty", "discrimination_norm", "top_expert"]
    assert (params["discrimination_norm"] >= 0).all()
    # With abilities centred, difficulty is minus the query's mean logit over the pool...
    logits = np.log(train_probs / (1 - train_probs))
    np.testing.assert_allclose(params["difficulty"], -logits.mean(axis=1), atol=1e-4)
    # ...so queries the pool gets right more often come out easier.
    rho = spearmanr(params["difficulty"], train.scores.mean(axis=1)).statistic
    assert rho < -0.3
    # Texts alone (no ids, no embeddings) are embedded and indexed by position.
    by_text = router.query_parameters(split["test"][0].texts[:3])
    assert list(by_text.index) == [0, 1, 2]


def test_mf_model_embeddings(trained, split):
    router = trained["mf"]
    frame = router.model_embeddings()
    assert list(frame.index) == split["train"][0].models
    assert frame.shape == (5, 8 + 1)


def test_dimension_grid_is_chosen_on_validation(fitted, split):
    name, dim = fitted.name, FAST["dim"]
    losses = {dim: fitted.fit_result.best_validation_loss,
              4: fit(name, split, dim=4).fit_result.best_validation_loss}
    router = fit(name, split, dim_choices=[4, dim])
    assert router.dim == min(losses, key=losses.get)
    assert router.fit_result.best_validation_loss == min(losses.values())
    with pytest.raises(ValueError, match="validation"):
        make_router(name, **FAST, dim_choices=[4, dim]).fit(
            split["train"][0], None, {"train": split["train"][1]})


def test_unknown_model_and_wrong_embedding_size_are_errors(fitted, split):
    with pytest.raises(DataError, match="no-such-model"):
        fitted.predict_proba(queries(split, "test"), ["no-such-model"])
    table, embeddings = split["test"]
    with pytest.raises(ValueError, match="embeddings have shape"):
        fitted.predict_proba(Queries.from_table(table, embeddings[:, :100]))


@pytest.mark.parametrize("name, bad", [("irt", {"experts": 0}), ("mf", {"dropout": 1.0}),
                                       ("mf", {"dim_choices": [8, 0]})])
def test_bad_settings_are_refused_before_training(name, bad, split):
    with pytest.raises(ValueError, match=next(iter(bad))):
        fit(name, split, **bad)
