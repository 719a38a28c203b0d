"""Splits by query, model and task on real MMLU-Pro outcomes."""
from __future__ import annotations

import json

import pytest

from data_builders.errors import DataError
from data_builders.splits import Split, make_split, normalise_text


def _texts(table, ids):
    return set(table.queries.loc[list(ids), "query"].map(normalise_text))


def _assert_no_shared_text(table, split):
    train, validation, test = (_texts(table, split.train), _texts(table, split.validation),
                               _texts(table, split.test))
    assert not train & validation
    assert not train & test
    assert not validation & test


@pytest.fixture(scope="module")
def query_split(mmlu_pro):
    return make_split(mmlu_pro, "query", seed=0)


def test_query_split_keeps_every_duplicated_text_in_one_part(mmlu_pro, query_split):
    keys = mmlu_pro.queries["query"].map(normalise_text)
    duplicated = keys[keys.duplicated(keep=False)]
    assert len(duplicated) > 200  # MMLU-Pro repeats questions, so the property is not trivial
    _assert_no_shared_text(mmlu_pro, query_split)
    part_of = {q: p for p in ("train", "validation", "test") for q in getattr(query_split, p)}
    assert len(part_of) == len(mmlu_pro)  # every query is somewhere, and in one part only
    for _, ids in duplicated.groupby(duplicated).groups.items():
        assert len({part_of[q] for q in ids}) == 1


def test_query_split_is_stratified_by_task(mmlu_pro, query_split):
    tasks = mmlu_pro.queries["task"]
    test_share = tasks.loc[list(query_split.test)].value_counts() / tasks.value_counts()
    assert test_share.between(0.19, 0.21).all(), test_share
    train_and_validation = list(query_split.train) + list(query_split.validation)
    validation_share = (tasks.loc[list(query_split.validation)].value_counts()
                        / tasks.loc[train_and_validation].value_counts())
    assert validation_share.between(0.09, 0.11).all(), validation_share
    assert query_split.train_models == query_split.test_models == tuple(mmlu_pro.models)
    assert query_split.held_out_tasks == ()


def test_split_is_deterministic_and_seed_sensitive(mmlu_pro, query_split):
    assert make_split(mmlu_pro, "query", seed=0) == query_split
    other = make_split(mmlu_pro, "query", seed=1)
    assert set(other.test) != set(query_split.test)
    assert set(other.validation) != set(query_split.validation)
    smaller = make_split(mmlu_pro, "query", seed=0, test_size=0.1)
    assert len(smaller.test) < len(query_split.test)


def test_model_split_holds_models_out(mmlu_pro, query_split):
    split = make_split(mmlu_pro, "model", seed=0)
    assert len(split.test_models) == round(0.2 * len(mmlu_pro.models))
    assert not set(split.test_models) & set(split.train_models)
    assert set(split.test_models) | set(split.train_models) == set(mmlu_pro.models)
    # Queries are split as for kind="query" with the same seed.
    assert (split.train, split.validation, split.test) == (
        query_split.train, query_split.validation, query_split.test)
    train, validation, test = split.tables(mmlu_pro)
    assert train.models == validation.models == list(split.train_models)
    assert test.models == list(split.test_models)
    assert test.query_ids == list(split.test)
    assert make_split(mmlu_pro, "model", seed=1).test_models != split.test_models

    chosen = make_split(mmlu_pro, "model", held_out_models=["gemma-7b", "mathstral-7B"])
    assert set(chosen.test_models) == {"gemma-7b", "mathstral-7B"}
    assert "gemma-7b" not in chosen.train_models


def test_task_split_holds_tasks_out(mmlu_pro):
    split = make_split(mmlu_pro, "task", seed=0)
    tasks = mmlu_pro.queries["task"]
    assert len(split.held_out_tasks) == round(0.2 * tasks.nunique())
    assert set(split.test) == set(tasks.index[tasks.isin(split.held_out_tasks)])
    assert not set(tasks.loc[list(split.train) + list(split.validation)]) & set(
        split.held_out_tasks)
    _assert_no_shared_text(mmlu_pro, split)
    assert split.train_models == split.test_models

    chosen = make_split(mmlu_pro, "task", held_out_tasks=["law"], seed=3)
    assert chosen.held_out_tasks == ("law",)
    assert set(tasks.loc[list(chosen.test)]) == {"law"}
    assert len(chosen.test) == int((tasks == "law").sum())


def test_unknown_or_misplaced_held_out_names_are_errors(mmlu_pro):
    with pytest.raises(DataError) as err:
        make_split(mmlu_pro, "model", held_out_models=["gemma-7b", "gpt-17"])
    assert err.value.field == "model" and "gpt-17" in str(err.value)
    with pytest.raises(DataError) as err:
        make_split(mmlu_pro, "task", held_out_tasks=["astrology"])
    assert err.value.field == "task" and "astrology" in str(err.value)
    with pytest.raises(DataError) as err:
        make_split(mmlu_pro, "task", held_out_tasks=sorted(mmlu_pro.queries["task"].unique()))
    assert err.value.field == "task"
    with pytest.raises(DataError) as err:
        make_split(mmlu_pro, "query", held_out_models=["gemma-7b"])
    assert err.value.field == "held_out_models"
    with pytest.raises(DataError) as err:
        make_split(mmlu_pro, "queries")
    assert err.value.field == "kind"
    with pytest.raises(DataError) as err:
        make_split(mmlu_pro, "query", test_size=1.5)
    assert err.value.field == "test_size"


def test_split_json_round_trip_and_strict_loading(mmlu_small):
    split = make_split(mmlu_small, "model", seed=2, held_out_models=["gemma-7b"])
    again = Split.from_json(json.loads(json.dumps(split.to_json())))
    assert again == split
    assert again.sizes() == {"train_queries": len(split.train),
                             "validation_queries": len(split.validation),
                             "test_queries": len(split.test), "train_models": 4,
                             "test_models": 1, "held_out_tasks": 0, "held_out_families": 0}
    saved = split.to_json()
    del saved["validation"]
    with pytest.raises(DataError) as err:
        Split.from_json(saved)
    assert err.value.field == "validation"
    overlapping = split.to_json()
    overlapping["test"] = overlapping["test"] + overlapping["train"][:1]
    with pytest.raises(DataError) as err:
        Split.from_json(overlapping)
    assert err.value.field == "test"


def test_family_split_holds_whole_families_out(mmlu_pro):
    """--split family: every model of a held-out family is held out together, the rest train;
    queries are split as in the query split (same seed, same parts)."""
    from data_builders.splits import model_families

    table = mmlu_pro.complete()
    families = model_families(table.models)
    assert families["llama-2"] == ["Llama-2-13b-hf", "Llama-2-70b-hf", "Llama-2-7b-hf"]
    assert {"mistral", "mathstral-7B"} & set(families["mistral"]) == {"mathstral-7B"}
    split = make_split(table, "family", seed=0)
    assert split.held_out_families
    held = [m for f in split.held_out_families for m in families[f]]
    assert sorted(split.test_models) == sorted(held)
    assert set(split.train_models) == set(table.models) - set(held)
    assert len(held) >= round(0.2 * len(table.models))
    query = make_split(table, "query", seed=0)
    assert (split.train, split.validation, split.test) == (query.train, query.validation,
                                                           query.test)
    chosen = make_split(table, "family", seed=0, held_out_families=["gemini", "qwen"])
    assert sorted(chosen.test_models) == sorted(families["gemini"] + families["qwen"])
    assert Split.from_json(json.loads(json.dumps(chosen.to_json()))) == chosen
    with pytest.raises(DataError) as err:
        make_split(table, "family", held_out_families=["no-such-family"])
    assert err.value.field == "family"
    with pytest.raises(DataError):
        make_split(table, "family", held_out_families=list(families))


def test_validation_models_are_whole_seeded_train_families(mmlu_pro):
    """Model and family splits can leave a seeded share of their train models out of fitting
    to validate on: whole families for the family split, never a test model, at least two
    validated and two fitted; a query split has none to offer."""
    from data_builders.splits import model_families, validation_models

    table = mmlu_pro.complete()
    split = make_split(table, "family", seed=0)
    held = validation_models(split, 0.15)
    assert held == validation_models(split, 0.15)  # seeded
    assert 2 <= len(held) <= round(0.15 * len(split.train_models))  # a large family passed
    assert set(held) <= set(split.train_models)
    families = model_families(split.train_models)
    for family in {f for f, members in families.items() if set(members) & set(held)}:
        assert set(families[family]) <= set(held)
    assert validation_models(split, 0.0) == []
    by_model = make_split(table, "model", seed=0)
    drawn = validation_models(by_model, 0.2)
    assert set(drawn) <= set(by_model.train_models)
    assert len(drawn) == round(0.2 * len(by_model.train_models))
    with pytest.raises(DataError) as err:
        validation_models(make_split(table, "query", seed=0), 0.2)
    assert err.value.field == "validation_model_share"
    small = make_split(table.subset(models=table.models[:5]), "model", seed=0)
    with pytest.raises(DataError, match="at least two"):
        validation_models(small, 0.1)  # one of four
