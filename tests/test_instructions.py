"""Capability instructions and k-shot groups built from real MMLU-Pro outcomes."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

import data_builders.__main__ as cli
from data_builders.aptitude import represent_models, select_core_items, task_keywords
from data_builders.errors import DataError
from data_builders.instructions import (INQUIRY_PROMPT, build_instructions, build_kshot_groups,
                                        groups_per_model, load_instructions, save_instructions)
from data_builders.splits import Split, make_split


@pytest.fixture(scope="module")
def setting(mmlu_small):
    split = make_split(mmlu_small, "query", seed=0)
    train, validation, test = split.tables(mmlu_small)
    aptitude = select_core_items(train, 5, seed=0)
    representations = represent_models(aptitude, mmlu_small, task_keywords(train, n=3))
    return split, (train, validation, test), aptitude, representations


def test_one_instruction_per_observed_cell_without_core_items(mmlu_pro, setting):
    _, (train, _, _), aptitude, representations = setting
    ds = build_instructions(train, representations, exclude=aptitude)
    assert ds.column_names == ["query_id", "model", "model_representation", "instruction",
                               "inquiry", "label", "task"]
    assert len(ds) == (len(train) - len(aptitude.item_ids)) * len(train.models)
    frame = ds.to_pandas()
    assert not set(frame["query_id"]) & aptitude.item_ids
    assert not frame.duplicated(["query_id", "model"]).any()
    for row in frame.sample(200, random_state=0).itertuples():
        assert row.label == train.scores.at[row.query_id, row.model]
        assert row.instruction == train.queries.at[row.query_id, "query"]
        assert row.task == train.queries.at[row.query_id, "task"]
        assert row.model_representation == representations[row.model]
    assert (frame["inquiry"] == INQUIRY_PROMPT).all()

    # Missing scores give no row: DeepSeek-Coder-V2 has none for some MMLU-Pro questions.
    engineering = mmlu_pro.queries.index[mmlu_pro.queries["task"] == "engineering"]
    some = mmlu_pro.subset(list(engineering[:300]), ["DeepSeek-Coder-V2", "gemma-7b"])
    observed = int(some.scores.notna().to_numpy().sum())
    assert observed < 600
    assert len(build_instructions(some, {m: m for m in some.models}, exclude=())) == observed


def test_evaluation_instructions_never_hold_core_items(mmlu_small, setting):
    split, _, aptitude, representations = setting
    # Even when handed the whole table, the builder leaves the core items out.
    ds = build_instructions(mmlu_small, representations, exclude=aptitude)
    assert not set(ds["query_id"]) & aptitude.item_ids
    assert len(set(ds["query_id"])) == len(mmlu_small) - len(aptitude.item_ids)
    test = build_instructions(mmlu_small.subset(list(split.test)), representations,
                              exclude=aptitude)
    assert set(test["query_id"]) == set(split.test)


def test_a_model_without_representation_is_an_error(setting):
    _, (train, _, _), aptitude, representations = setting
    partial = {m: r for m, r in representations.items() if m != "gemma-7b"}
    for build in (lambda: build_instructions(train, partial, exclude=aptitude),
                  lambda: build_kshot_groups(train, partial, 3, 0, exclude=aptitude)):
        with pytest.raises(DataError, match="gemma-7b") as err:
            build()
        assert err.value.field == "model"


def test_kshot_groups_have_one_right_answer_at_the_recorded_place(setting):
    _, (train, _, _), aptitude, representations = setting
    k = 4
    groups = build_kshot_groups(train, representations, k, seed=0, exclude=aptitude)
    frame = groups.to_pandas()
    assert len(frame) > 0
    for row in frame.itertuples():
        assert len(row.query_ids) == len(row.labels) == len(row.instructions) == k
        truth = [train.scores.at[q, row.model] for q in row.query_ids]
        assert list(row.labels) == truth
        assert truth[row.positive_index] >= 0.5
        assert sum(score >= 0.5 for score in truth) == 1
        assert not set(row.query_ids) & aptitude.item_ids
        assert list(row.instructions) == train.queries.loc[list(row.query_ids), "query"].tolist()
        assert row.model_representation == representations[row.model]
    usable = train.scores.drop(index=list(aptitude.item_ids))
    for model, count in groups_per_model(groups).items():
        right = int((usable[model] >= 0.5).sum())
        wrong = int((usable[model] < 0.5).sum())
        assert count == min(right, wrong // (k - 1)), model
        used = [q for ids in frame.loc[frame["model"] == model, "query_ids"] for q in ids]
        assert len(used) == len(set(used))  # each instruction at most once per model
    # The right answer is not always in the same place.
    assert frame["positive_index"].nunique() == k


def test_kshot_groups_are_seeded(setting):
    _, (train, _, _), aptitude, representations = setting
    first = build_kshot_groups(train, representations, 3, seed=0, exclude=aptitude)
    assert build_kshot_groups(train, representations, 3, seed=0,
                              exclude=aptitude).to_dict() == first.to_dict()
    other = build_kshot_groups(train, representations, 3, seed=1, exclude=aptitude)
    assert other["query_ids"] != first["query_ids"]
    with pytest.raises(DataError) as err:
        build_kshot_groups(train, representations, 1, seed=0, exclude=aptitude)
    assert err.value.field == "k"


def test_save_and_load_round_trip(tmp_path, setting):
    _, (_, validation, _), aptitude, representations = setting
    instructions = build_instructions(validation, representations, exclude=aptitude)
    groups = build_kshot_groups(validation, representations, 3, seed=0, exclude=aptitude)
    for name, ds in (("instructions", instructions), ("groups", groups)):
        path = save_instructions(ds, tmp_path / f"{name}.parquet")
        assert load_instructions(path).to_dict() == ds.to_dict()
    shuffled = instructions.shuffle(seed=0).select(range(10))
    loaded = load_instructions(save_instructions(shuffled, tmp_path / "some.parquet"))
    assert loaded["query_id"] == shuffled["query_id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["groups.parquet",
                                                          "instructions.parquet", "some.parquet"]
    # A real file with a column cut away.
    pq.write_table(pq.read_table(tmp_path / "instructions.parquet").drop(["label"]),
                   tmp_path / "broken.parquet")
    with pytest.raises(DataError) as err:
        load_instructions(tmp_path / "broken.parquet")
    assert err.value.field == "label" and err.value.file.endswith("broken.parquet")


def test_cli_writes_split_aptitude_and_instructions(tmp_path, monkeypatch, mmlu_small, capsys):
    monkeypatch.setattr(cli, "load_outcomes", lambda name: mmlu_small)
    out = tmp_path / "out"
    assert cli.main(["instructions", "--data", "mmlu_small", "--split", "model", "--seed", "0",
                     "--held-out", "gemma-7b", "--k-per-task", "5", "--kshot", "3",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "core-item cells left out" in printed and "k-shot groups" in printed
    split = Split.from_json(json.loads((out / "split.json").read_text()))
    assert split == make_split(mmlu_small, "model", seed=0, held_out_models=["gemma-7b"])
    aptitude = json.loads((out / "aptitude.json").read_text())
    core = {q for ids in aptitude["items"].values() for q in ids}
    representations = json.loads((out / "representations.json").read_text())
    assert set(representations) == set(mmlu_small.models)
    test = load_instructions(out / "instructions_test.parquet")
    assert set(test["model"]) == {"gemma-7b"}
    assert set(test["query_id"]) == set(split.test)
    train = load_instructions(out / "instructions_train.parquet")
    assert "gemma-7b" not in set(train["model"])
    assert not set(train["query_id"]) & core
    kshot = load_instructions(out / "kshot_train.parquet")
    counts = json.loads((out / "counts.json").read_text())
    assert counts["kshot_train"] == len(kshot) and counts["instructions_train"] == len(train)
    assert not list(out.glob("*.tmp"))
