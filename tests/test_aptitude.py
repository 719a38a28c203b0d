"""The Model-SAT aptitude test on real MMLU-Pro outcomes."""
from __future__ import annotations

import json
import math

import pytest

from data_builders.aptitude import (
    AptitudeItem,
    AptitudeTest,
    MissingAptitudeScore,
    aptitude_items,
    check_item_results,
    exclude_core_items,
    read_aptitude_items,
    score_models,
    select_core_items,
)
from data_builders.errors import DataError
from data_builders.splits import make_split


@pytest.fixture(scope="module")
def setting(mmlu_pro):
    split = make_split(mmlu_pro, "query", seed=0)
    train, _, _ = split.tables(mmlu_pro)
    return split, train, select_core_items(train, 10, seed=0)


@pytest.fixture(scope="module")
def small_setting(mmlu_small):
    split = make_split(mmlu_small, "model", seed=0, held_out_models=["gemma-7b"])
    train, _, _ = split.tables(mmlu_small)
    test = select_core_items(train, 5, seed=0)
    return split, train, test


def test_core_items_come_from_train_and_never_from_evaluation(mmlu_pro, setting):
    split, train, test = setting
    assert test.tasks == sorted(mmlu_pro.queries["task"].unique())
    assert all(len(ids) == 10 for ids in test.items.values())
    assert test.item_ids <= set(split.train)
    test.check_not_in(split.validation, "validation")
    test.check_not_in(split.test, "test")
    with pytest.raises(DataError, match="core item"):
        test.check_not_in(split.train, "train")
    for task, ids in test.items.items():
        assert set(train.queries.loc[list(ids), "task"]) == {task}
    remaining = exclude_core_items(mmlu_pro, test)
    assert len(remaining) == len(mmlu_pro) - 140
    assert not test.item_ids & set(remaining.query_ids)


def test_core_items_separate_models_better_than_the_task_average(setting):
    _, train, test = setting
    variance = train.scores.var(axis=1)
    for task, ids in test.items.items():
        task_ids = train.queries.index[train.queries["task"] == task]
        assert variance.loc[list(ids)].mean() > variance.loc[task_ids].mean(), task
        # Every core item is answered right by some models and wrong by others.
        assert (variance.loc[list(ids)] > 0).all(), task


def test_core_items_are_deterministic_and_seeded(setting, mmlu_small):
    _, train, test = setting
    assert select_core_items(train, 10, seed=0) == test
    small = [select_core_items(mmlu_small, 10, seed=s) for s in range(4)]
    assert small[0] == select_core_items(mmlu_small, 10, seed=0)
    # With five models many items tie, so the seed decides among them.
    assert len({s.item_ids for s in small}) > 1
    everything = select_core_items(mmlu_small, 100, seed=0)
    assert all(len(ids) == 60 for ids in everything.items.values())
    with pytest.raises(DataError) as err:
        select_core_items(mmlu_small, 0, seed=0)
    assert err.value.field == "k_per_task"


def test_aptitude_test_json_round_trip(setting):
    _, _, test = setting
    again = AptitudeTest.from_json(json.loads(json.dumps(test.to_json())))
    assert again == test and again.item_ids == test.item_ids
    saved = test.to_json()
    del saved["seed"]
    with pytest.raises(DataError) as err:
        AptitudeTest.from_json(saved)
    assert err.value.field == "seed"


def test_score_models_matches_a_direct_count(mmlu_small, small_setting):
    _, _, test = small_setting
    accuracy = score_models(test, mmlu_small)
    assert list(accuracy.index) == mmlu_small.models and list(accuracy.columns) == test.tasks
    for model in mmlu_small.models:
        for task, ids in test.items.items():
            values = [mmlu_small.scores.at[q, model] for q in ids]
            assert accuracy.at[model, task] == pytest.approx(sum(values) / len(values))


def test_missing_core_scores_give_nan_with_a_warning(mmlu_pro):
    missing = mmlu_pro.scores["DeepSeek-Coder-V2"].isna()
    math_missing = mmlu_pro.queries.index[missing & (mmlu_pro.queries["task"] == "math")]
    law = mmlu_pro.queries.index[mmlu_pro.queries["task"] == "law"]
    test = AptitudeTest({"math": tuple(math_missing[:3]), "law": tuple(law[:3])}, 3, 0)
    with pytest.warns(MissingAptitudeScore, match="DeepSeek-Coder-V2"):
        accuracy = score_models(test, mmlu_pro)
    assert math.isnan(accuracy.at["DeepSeek-Coder-V2", "math"])
    assert not math.isnan(accuracy.at["DeepSeek-Coder-V2", "law"])
    assert not accuracy.drop(index="DeepSeek-Coder-V2").isna().any().any()


def test_aptitude_items_carry_question_options_and_answer(mmlu_pro, setting, tmp_path):
    """What a new model takes: the question as the candidates saw it, its option letters and
    the reference answer (MMLU-Pro's key), round-tripped through JSONL."""
    _, train, test = setting
    items = aptitude_items(mmlu_pro, test)
    assert [i.id for i in items] == [q for t in test.tasks for q in test.items[t]]
    for item in items:
        assert item.question == mmlu_pro.queries.at[item.id, "query"]
        assert item.grading == "multiple_choice" and item.answer in item.choices
        assert item.choices[0] == "A" and f"\n{item.answer}) " in item.question
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(i.to_json()) + "\n" for i in items))
    assert read_aptitude_items(path) == items
    path.write_text(json.dumps({**items[0].to_json(), "grading": "vibes"}) + "\n")
    with pytest.raises(DataError) as err:
        read_aptitude_items(path)
    assert err.value.line == 1 and err.value.field == "grading"
    # A question whose own lines start "A) ", "B) " (MMLU-Pro's multi-part ones): the options
    # are the last run of option lines, so the item is written as it loads.
    two_part = AptitudeItem.of("q", "t", "A) Find x. B) Find y.\nA) A) 1, B) 2\nB) A) 3, B) 4\n"
                               "C) A) 5, B) 6", "B")
    assert two_part.choices == ("A", "B", "C") and two_part.grading == "multiple_choice"
    assert AptitudeItem.from_json(two_part.to_json()) == two_part
    # No reference answer (a source without keys): kept, but not gradable.
    assert AptitudeItem.of("q", "t", "A) yes\nB) no", None).grading == "none"


def test_item_results_are_checked_against_the_test(setting):
    _, _, test = setting
    results = {q: 1.0 for q in test.item_ids}
    assert check_item_results(test, results) == results
    with pytest.raises(DataError, match="not on the aptitude"):
        check_item_results(test, {**results, "elsewhere/1": 1.0})
    one_task = {q: 1.0 for q in test.items[test.tasks[0]]}
    with pytest.raises(DataError, match="no core-item result"):
        check_item_results(test, one_task)
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        check_item_results(test, {q: 1.5 for q in test.item_ids})
