"""The canonical outcome table: schema validation, conversion, Parquet round trip."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_builders import DataError, OutcomeTable


@pytest.fixture
def long_rows(mmlu_small):
    return mmlu_small.subset(mmlu_small.query_ids[:20]).to_long()


def test_long_round_trip_keeps_every_cell(mmlu_small, tmp_path):
    path = mmlu_small.save(tmp_path / "t.parquet")
    back = OutcomeTable.load(path)
    assert back.models == mmlu_small.models
    pd.testing.assert_frame_equal(back.scores, mmlu_small.scores)
    pd.testing.assert_frame_equal(back.queries, mmlu_small.queries)
    pd.testing.assert_frame_equal(back.costs, mmlu_small.costs)
    assert back.cost_unit == "output_chars" and "MMLU-Pro" in back.provenance
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_cells_stay_missing(mmlu_pro):
    # DeepSeek-Coder-V2 has no record for some questions: NaN, never 0.
    assert mmlu_pro.scores["DeepSeek-Coder-V2"].isna().sum() > 1000
    complete = mmlu_pro.complete()
    assert not complete.scores.isna().any().any()
    assert len(complete) == int(mmlu_pro.scores.notna().all(axis=1).sum())


def _error(rows, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        OutcomeTable.from_long(rows, name="t", file="rows.csv",
                               line_numbers=np.arange(2, len(rows) + 2), **kwargs)
    return info.value


def test_missing_column_is_named(long_rows):
    err = _error(long_rows.drop(columns=["task"]))
    assert err.field == "task" and err.file == "rows.csv"


def test_non_numeric_score_names_line_and_field(long_rows):
    rows = long_rows.astype({"score": object})
    rows.loc[7, "score"] = "yes"
    err = _error(rows)
    assert (err.line, err.field) == (9, "score")


def test_out_of_range_score_and_negative_cost(long_rows):
    rows = long_rows.copy()
    rows.loc[3, "score"] = 1.5
    assert (_error(rows).line, _error(rows).field) == (5, "score")
    rows = long_rows.copy()
    rows.loc[4, "cost"] = -1.0
    assert _error(rows, cost_unit="output_chars").field == "cost"


def test_empty_text_duplicates_and_conflicts(long_rows):
    rows = long_rows.copy()
    rows.loc[2, "query"] = "   "
    assert (_error(rows).line, _error(rows).field) == (4, "query")
    dup = pd.concat([long_rows, long_rows.iloc[[5]]], ignore_index=True)
    assert _error(dup).line == len(long_rows) + 2
    rows = long_rows.copy()
    qid = rows.loc[0, "query_id"]
    second = rows.index[rows["query_id"] == qid][1]
    rows.loc[second, "task"] = "other-task"
    err = _error(rows)
    assert err.field == "task" and err.line == second + 2


def test_costs_need_a_unit(long_rows):
    assert "cost_unit" in str(_error(long_rows))


def test_subset_and_unknown_models(mmlu_small):
    part = mmlu_small.subset(mmlu_small.query_ids[:5], ["gemma-7b", "mathstral-7B"])
    assert part.scores.shape == (5, 2) and part.costs.shape == (5, 2)
    with pytest.raises(DataError, match="no-such-model") as info:
        mmlu_small.subset(models=["gemma-7b", "no-such-model"])
    assert info.value.field == "model"
    with pytest.raises(DataError, match="unknown query ids"):
        mmlu_small.subset(["nope"])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DataError) as info:
        OutcomeTable.load(tmp_path / "missing.parquet")
    assert info.value.file.endswith("missing.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match="Parquet"):
        OutcomeTable.load(bad)


def test_outcomes_round_trip_through_a_datasets_folder(tmp_path):
    """Item 12: outcome tables as Arrow-backed datasets; load_outcomes reads the folder."""
    from data_builders.sources import load_outcomes

    table = load_outcomes("routerbench")
    folder = table.save_to_disk(tmp_path / "rb")
    again = load_outcomes(str(folder))
    assert again.name == table.name and again.models == table.models
    assert again.scores.equals(table.scores) and again.costs.equals(table.costs)
    assert again.responses.equals(table.responses) and again.cost_unit == "usd"
    assert table.to_dataset().num_rows == int(table.scores.notna().to_numpy().sum())
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not a datasets folder"):
        load_outcomes(str(tmp_path / "plain"))
