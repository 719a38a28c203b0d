"""Model-SAT k-shot groups and the data builders' `prepare` command, on real MMLU-Pro outcomes."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

import data_builders.__main__ as cli
from data_builders.aptitude import select_core_items
from data_builders.errors import DataError
from data_builders.experiment import prepare_experiment
from data_builders.kshot import GROUP_COLUMNS, build_kshot_groups, groups_per_model
from data_builders.splits import Split, make_split


@pytest.fixture(scope="module")
def setting(mmlu_small):
    split = make_split(mmlu_small, "query", seed=0)
    train, validation, test = split.tables(mmlu_small)
    aptitude = select_core_items(train, 5, seed=0)
    return split, (train, validation, test), aptitude


def test_kshot_groups_have_one_right_answer_at_the_recorded_place(setting):
    _, (train, _, _), aptitude = setting
    k = 4
    frame = build_kshot_groups(train, k, seed=0, exclude=aptitude)
    assert list(frame.columns) == GROUP_COLUMNS and len(frame) > 0
    for row in frame.itertuples():
        assert len(row.query_ids) == k
        truth = [train.scores.at[q, row.model] for q in row.query_ids]
        assert truth[row.positive_index] >= 0.5
        assert sum(score >= 0.5 for score in truth) == 1
        assert not set(row.query_ids) & aptitude.item_ids
    usable = train.scores.drop(index=list(aptitude.item_ids))
    for model, count in groups_per_model(frame).items():
        right = int((usable[model] >= 0.5).sum())
        wrong = int((usable[model] < 0.5).sum())
        assert count == min(right, wrong // (k - 1)), model
        used = [q for ids in frame.loc[frame["model"] == model, "query_ids"] for q in ids]
        assert len(used) == len(set(used))  # each instruction at most once per model
    # The right answer is not always in the same place.
    assert frame["positive_index"].nunique() == k


def test_kshot_groups_are_seeded(setting):
    _, (train, _, _), aptitude = setting
    first = build_kshot_groups(train, 3, seed=0, exclude=aptitude)
    assert build_kshot_groups(train, 3, seed=0, exclude=aptitude).equals(first)
    other = build_kshot_groups(train, 3, seed=1, exclude=aptitude)
    assert list(other["query_ids"]) != list(first["query_ids"])
    with pytest.raises(DataError) as err:
        build_kshot_groups(train, 1, seed=0, exclude=aptitude)
    assert err.value.field == "k"


def test_cli_prepare_writes_split_aptitude_and_groups(tmp_path, small_data_path, mmlu_small,
                                                      capsys):
    out = tmp_path / "out"
    assert cli.main(["prepare", "--data", small_data_path, "--split", "model", "--seed", "0",
                     "--held-out", "gemma-7b", "--k-per-task", "5", "--kshot", "3",
                     "--out", str(out)]) == 0
    assert "k-shot groups" in capsys.readouterr().out
    split = Split.from_json(json.loads((out / "split.json").read_text()))
    assert split == make_split(mmlu_small, "model", seed=0, held_out_models=["gemma-7b"])
    aptitude = json.loads((out / "aptitude.json").read_text())
    core = {q for ids in aptitude["items"].values() for q in ids}
    representations = json.loads((out / "representations.json").read_text())
    assert set(representations) == set(mmlu_small.models)
    groups = pq.read_table(out / "kshot_train.parquet").to_pandas()
    assert "gemma-7b" not in set(groups["model"])
    assert not {q for ids in groups["query_ids"] for q in ids} & core
    counts = json.loads((out / "counts.json").read_text())
    assert counts["kshot_train"] == len(groups)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_held_out_models_labels_choose_no_core_item(small_data_path, mmlu_small, tmp_path):
    """Model split: the core items are the same whatever the held-out model answered, and the
    data builders' CLI and training choose the same ones (one experiment preparation)."""
    from train.config import TrainConfig
    from train.data import prepare

    base = prepare_experiment(mmlu_small, "model", held_out=["gemma-7b"], seed=0,
                              k_per_task=5).aptitude
    flipped = mmlu_small.subset()
    flipped.scores["gemma-7b"] = 1.0 - flipped.scores["gemma-7b"]
    assert prepare_experiment(flipped, "model", held_out=["gemma-7b"], seed=0,
                              k_per_task=5).aptitude == base
    trained = prepare(TrainConfig(data=small_data_path, split="model", held_out=["gemma-7b"],
                                  k_per_task=5)).aptitude
    assert trained == base
    cli.main(["prepare", "--data", small_data_path, "--split", "model", "--held-out",
              "gemma-7b", "--k-per-task", "5", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "aptitude.json").read_text()) == base.to_json()
