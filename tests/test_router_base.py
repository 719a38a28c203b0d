"""The Router interface, its registry, save/load, and the embedding cache."""
from __future__ import annotations

import json

import numpy as np
import pytest

from capsat.routers import ROUTERS, Queries, Router, get_router_class, make_router
from capsat.routers.baselines import BestSingleConfig
from data_builders import DataError
from data_builders.embeddings import Embedder


def test_registry_has_every_classic_router():
    expected = {"random", "best_single", "oracle", "knn", "kmeans", "classifier", "multilabel",
                "irt", "mf"}
    assert expected <= set(ROUTERS)
    for name, entry in ROUTERS.items():
        klass = get_router_class(name)
        assert klass.name == name and klass.config_class is entry.config_class
        assert klass.__doc__ and entry.summary, f"{name} has no docstring or summary"


def test_best_single_routes_to_the_best_training_model(mmlu_small):
    router = make_router("best_single").fit(mmlu_small)
    best = mmlu_small.scores.mean().idxmax()
    assert set(router.route(mmlu_small)) == {best}
    probs = router.predict_proba(mmlu_small, ["gemma-7b", best])
    assert probs.shape == (len(mmlu_small), 2)
    np.testing.assert_allclose(probs[0], mmlu_small.scores[["gemma-7b", best]].mean())


def test_route_trades_probability_against_cost(mmlu_small):
    router = make_router("best_single").fit(mmlu_small)
    means = mmlu_small.scores.mean()
    best, cheapest = means.idxmax(), means.idxmin()
    costs = {m: (0.0 if m == cheapest else 1.0) for m in mmlu_small.models}
    assert set(router.route(mmlu_small, costs=costs, willingness_to_pay=0.0)) == {best}
    assert set(router.route(mmlu_small, costs=costs, willingness_to_pay=10.0)) == {cheapest}


def test_random_router_is_seeded_per_query(mmlu_small):
    a = make_router("random", seed=1).fit(mmlu_small)
    texts = mmlu_small.texts[:10]
    whole = a.predict_proba(texts)
    alone = a.predict_proba(texts[3:4])
    np.testing.assert_array_equal(whole[3:4], alone)
    other = make_router("random", seed=2).fit(mmlu_small).predict_proba(texts)
    assert not np.allclose(whole, other)
    picks = a.route(mmlu_small)
    assert len(set(picks)) == len(mmlu_small.models)


def test_save_load_round_trip_and_strict_config(mmlu_small, tmp_path):
    router = make_router("best_single").fit(mmlu_small)
    router.save(tmp_path / "r")
    loaded = Router.load(tmp_path / "r")
    assert type(loaded) is type(router) and loaded.models == router.models
    np.testing.assert_array_equal(loaded.predict_proba(mmlu_small), router.predict_proba(mmlu_small))
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "r").iterdir())
    meta = json.loads((tmp_path / "r" / "router.json").read_text())
    meta["config"]["unexpected"] = 1
    (tmp_path / "r" / "router.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown field"):
        Router.load(tmp_path / "r")
    with pytest.raises(DataError, match="no such router folder"):
        Router.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="router.json"):
        Router.load(tmp_path / "empty")


def test_unfitted_and_bad_arguments(mmlu_small):
    with pytest.raises(RuntimeError, match="not fitted"):
        make_router("best_single").predict_proba(["a question"])
    router = make_router("best_single").fit(mmlu_small)
    with pytest.raises(DataError, match="does not know"):
        router.predict_proba(["q"], ["gpt-99"])
    with pytest.raises(TypeError):
        router.predict_proba("one string, not a list")
    with pytest.raises(TypeError):
        make_router("best_single", config=BestSingleConfig(), seed=3)
    with pytest.raises(ValueError, match="rows"):
        Queries(["a", "b"], embeddings=np.zeros((3, 4)))


def test_embedding_cache_is_reused_without_loading_the_model(tmp_path):
    texts = ["What is the derivative of x^2?", "Who wrote Hamlet?", "What is the derivative of x^2?"]
    first = Embedder(cache_dir=tmp_path, progress=False)
    vectors = first.encode(texts)
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    second = Embedder(cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(second.encode(texts), vectors)
    assert second._model is None  # served from disk
    assert first.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        first.encode([1, 2])


def test_cached_key_ending_in_a_zero_byte_is_found(tmp_path):
    # numpy stores digests as "S20", which drops trailing NUL bytes.
    import hashlib

    text = next(f"question {i}" for i in range(10_000)
                if hashlib.sha1(f"question {i}".encode()).digest()[-1] == 0)
    first = Embedder(cache_dir=tmp_path, progress=False)
    vector = first.encode([text])
    second = Embedder(cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(second.encode([text]), vector)
    assert second._model is None
