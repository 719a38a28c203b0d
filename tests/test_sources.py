"""Shipped llmrouter and routerbench tables (checked against the raw files); generic importer."""
from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_builders.errors import DataError
from data_builders.sources import load_outcomes
from data_builders.sources.generic import read_outcomes

RAW = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT35 = "gpt-3.5-turbo-1106"


def raw_dir(name: str) -> Path:
    path = RAW / name
    if not path.is_dir():
        pytest.skip(f"raw data {path} not available")
    return path


def same(left: pd.DataFrame, right: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(left, right, check_dtype=False)


@pytest.fixture(scope="module")
def llmrouter():
    return load_outcomes("llmrouter")


@pytest.fixture(scope="module")
def routerbench():
    return load_outcomes("routerbench")


# ------------------------------------------------------------------------------ llmrouter
def test_llmrouter_shipped_properties(llmrouter):
    assert len(llmrouter.models) == 9 and llmrouter.queries["task"].nunique() == 14
    assert not llmrouter.queries["query"].duplicated().any()
    assert llmrouter.costs is None and llmrouter.responses is None
    assert not llmrouter.scores.isna().any().any()
    fractional = (llmrouter.scores % 1 != 0).any(axis=1)
    assert set(llmrouter.queries.loc[fractional, "task"]) == {"commongen"}
    for model in llmrouter.models:
        card = llmrouter.model_info[model]
        assert card["input_price"] > 0 and card["output_price"] > 0
        assert "/" in card["api_id"]
        assert card["size"].endswith("B") and card["feature"] and card["provider"]


def test_llmrouter_matches_raw(llmrouter):
    src = raw_dir("llmrouter")
    raw = pd.read_csv(src / "dcrouter_matrix.csv")
    models = list(raw.columns[6:])
    assert llmrouter.models == models
    raw["query_id"] = "llmrouter/" + raw["split"] + "/" + raw["row"].astype(str)
    leaked = (raw["split"] == "test") & raw["question"].isin(raw.loc[raw["split"] == "train",
                                                                      "question"])
    assert leaked.sum() == raw["in_train_too"].sum() == 119
    kept = raw[~leaked].set_index("query_id")
    assert sorted(llmrouter.query_ids) == sorted(kept.index)
    same(llmrouter.scores.loc[kept.index], kept[models])
    assert (llmrouter.queries.loc[kept.index, "query"] == kept["question"]).all()
    assert (llmrouter.queries.loc[kept.index, "task"] == kept["task_name"]).all()
    cards = json.loads((src / "models.json").read_text())
    for model in models:
        assert llmrouter.model_info[model]["input_price"] == cards[model]["input_price"]
        assert llmrouter.model_info[model]["output_price"] == cards[model]["output_price"]
        assert llmrouter.model_info[model]["api_id"] == cards[model]["model"]


# ---------------------------------------------------------------------------- routerbench
def test_routerbench_shipped_properties(routerbench):
    table = routerbench
    assert len(table.models) == 11 and table.cost_unit == "usd"
    assert set(table.queries["task"]) == {"arc-challenge", "mbpp", "winogrande"}
    scored = table.scores.notna()
    assert (table.costs[scored] > 0).sum().sum() == scored.sum().sum()
    assert table.responses[scored].map(lambda v: isinstance(v, str)).sum().sum() \
        == scored.sum().sum()
    # The blank scores are missing (never 0): 14 arc rows, gpt-3.5 only.
    missing = table.scores.isna()
    assert missing.sum().sum() == 14 and missing[GPT35].sum() == 14
    assert set(table.queries.loc[missing[GPT35], "task"]) == {"arc-challenge"}
    # Few-shot prefix gone: one question per query, short enough for a 256-token encoder.
    multiple_choice = table.queries[table.queries["task"] != "mbpp"]["query"]
    assert not multiple_choice.str.contains(r"Answer:\n[A-E]\n\n").any()
    assert multiple_choice.str.endswith("Answer:").all()
    assert table.queries["query"].str.len().max() < 1200


def test_routerbench_matches_raw(routerbench):
    src = raw_dir("routerbench")
    raw = pd.concat([pd.read_csv(path) for path in sorted(src.glob("*.csv"))], ignore_index=True)
    items = raw["prompt"].map(ast.literal_eval)
    two_item = items.map(len) == 2
    assert two_item.sum() == 14
    # Each two-item row repeats the sample_id of a one-item row whose gpt-3.5 score is blank.
    single = raw[~two_item].set_index("routerbench/" + raw.loc[~two_item, "sample_id"])
    assert single.index.is_unique
    assert set(raw.loc[two_item, "sample_id"]) == set(single.loc[single[GPT35].isna(),
                                                                  "sample_id"])
    assert sorted(routerbench.query_ids) == sorted(single.index)
    columns = [c for c in raw.columns if c + "|total_cost" in raw.columns]
    for column in columns:
        model = column.rsplit("/", 1)[-1]
        np.testing.assert_array_equal(routerbench.scores.loc[single.index, model],
                                      single[column])
        scored = single[column].notna()
        np.testing.assert_allclose(routerbench.costs.loc[single.index[scored], model],
                                   single.loc[scored, column + "|total_cost"])
        raw_responses = single.loc[scored, column + "|model_response"].map(
            lambda text: ast.literal_eval(text)[0])
        assert (routerbench.responses.loc[single.index[scored], model] == raw_responses).all()
    # The query is the prompt's final item; what was cut is one prefix per benchmark.
    prompts = single["prompt"].map(lambda text: ast.literal_eval(text)[0])
    queries = routerbench.queries.loc[single.index, "query"]
    assert all(p.endswith(q) for p, q in zip(prompts, queries))
    prefixes = pd.Series([p[: len(p) - len(q)] for p, q in zip(prompts, queries)],
                         index=single.index)
    per_task = prefixes.groupby(single["eval_name"]).nunique()
    assert per_task.to_dict() == {"arc-challenge": 1, "mbpp": 1, "winogrande": 1}
    assert prefixes[single["eval_name"] == "mbpp"].eq("").all()
    assert prefixes[single["eval_name"] == "arc-challenge"].str.count("Answer:").iloc[0] == 5


# ---------------------------------------------------------------------- generic importer
@pytest.fixture(scope="module")
def real_rows(routerbench):
    """Real routerbench rows: 8 per task (mbpp responses span lines), one with a missing score."""
    ids = [q for task in ("arc-challenge", "mbpp", "winogrande")
           for q in routerbench.queries.index[routerbench.queries["task"] == task][:8]]
    ids.append(routerbench.scores.index[routerbench.scores[GPT35].isna()][0])
    return routerbench.subset(ids)


def wide_frame(table) -> pd.DataFrame:
    wide = table.queries.reset_index()
    for model in table.models:
        wide[model] = table.scores[model].to_numpy()
        wide[model + "|cost"] = table.costs[model].to_numpy()
        wide[model + "|response"] = table.responses[model].to_numpy()
    return wide


def long_frame(table) -> pd.DataFrame:
    return table.to_long()


def write(frame: pd.DataFrame, path: Path) -> Path:
    name = path.name
    if ".csv" in name:
        frame.to_csv(path, index=False)
    elif ".jsonl" in name:
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


FORMATS = ["csv", "csv.gz", "jsonl", "jsonl.gz", "parquet"]


@pytest.mark.parametrize("layout", ["wide", "long"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_generic_round_trip(real_rows, tmp_path, layout, fmt):
    frame = wide_frame(real_rows) if layout == "wide" else long_frame(real_rows)
    path = write(frame, tmp_path / f"rows.{fmt}")
    table = read_outcomes(path, cost_unit="usd")  # layout auto-detected
    assert table.name == "rows" and table.models == real_rows.models
    same(table.queries, real_rows.queries)
    same(table.scores, real_rows.scores)
    same(table.costs, real_rows.costs)
    same(table.responses, real_rows.responses)
    assert table.scores[GPT35].isna().sum() == 1


def test_generic_model_subset_and_load_outcomes_path(real_rows, tmp_path):
    path = write(wide_frame(real_rows), tmp_path / "rows.csv")
    chosen = ["claude-v2", "mistral-7b-chat"]
    table = load_outcomes(path, models=chosen, cost_unit="usd")
    assert table.models == chosen
    same(table.scores, real_rows.scores[chosen])
    with pytest.raises(DataError) as err:
        read_outcomes(path, models=["claude-v2", "gpt-5"], cost_unit="usd")
    assert err.value.field == "model" and "gpt-5" in str(err.value)


def record_start_lines(path: Path, ids) -> list[int]:
    """File line on which each record starts, found from its id (the CSV's first column)."""
    text = path.read_text()
    return [text[: text.index(f"\n{qid},") + 1].count("\n") + 1 for qid in ids]


def test_generic_ids_from_line_numbers(real_rows, tmp_path):
    wide = wide_frame(real_rows)
    path = write(wide, tmp_path / "with_ids.csv")
    starts = record_start_lines(path, wide["query_id"])
    assert starts != list(range(2, len(wide) + 2))  # multi-line records shift the lines
    bare = write(wide.drop(columns=["query_id", "task"]), tmp_path / "bare.csv")
    table = read_outcomes(bare, cost_unit="usd", default_task="mixed")
    assert table.query_ids == [f"bare/line{n}" for n in starts]
    assert set(table.tasks) == {"mixed"}
    same(table.scores.reset_index(drop=True), real_rows.scores.reset_index(drop=True))
    # Long rows without ids: the rows of one query share the id of its first line.
    long = long_frame(real_rows).drop(columns=["query_id"])
    table = read_outcomes(write(long, tmp_path / "long.jsonl"), cost_unit="usd")
    assert len(table) == len(real_rows)
    same(table.scores.reset_index(drop=True), real_rows.scores.reset_index(drop=True))


# ------------------------------------------------------------------- malformed inputs
def corrupt_wide_csv(real_rows, tmp_path, row: int, column: str, value, **write_options):
    """A wide CSV of real rows with one cell replaced; returns (path, file line of that row)."""
    wide = wide_frame(real_rows).astype(object)
    wide.loc[row, column] = value
    wide.loc[row, "query_id"] = "BAD-ROW"
    path = write(wide, tmp_path / "bad.csv")
    line = record_start_lines(path, ["BAD-ROW"])[0]
    assert line != row + 2  # earlier multi-line records make the line differ from the row
    return path, line


def test_error_missing_file(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(DataError) as err:
        read_outcomes(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), None, None)


def test_error_unreadable_gzip(real_rows, tmp_path):
    plain = write(wide_frame(real_rows), tmp_path / "rows.csv")
    fake = tmp_path / "rows.csv.gz"
    fake.write_bytes(plain.read_bytes())  # named .gz, but not compressed
    with pytest.raises(DataError) as err:
        read_outcomes(fake, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(fake), 1, None)


def test_error_unreadable_parquet(real_rows, tmp_path):
    fake = tmp_path / "rows.parquet"
    fake.write_bytes(write(wide_frame(real_rows), tmp_path / "rows.csv").read_bytes())
    with pytest.raises(DataError) as err:
        read_outcomes(fake, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(fake), None, None)


def test_error_bad_json_line(real_rows, tmp_path):
    path = write(long_frame(real_rows), tmp_path / "rows.jsonl.gz")
    with gzip.open(path, "rt") as fh:
        lines = fh.read().splitlines()
    lines[6] = lines[6][:-5]  # truncate the 7th record
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_outcomes(path, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 7, None)


@pytest.mark.parametrize("column", ["query", "task"])
def test_error_missing_column(real_rows, tmp_path, column):
    path = write(wide_frame(real_rows).drop(columns=[column]), tmp_path / "rows.csv")
    with pytest.raises(DataError) as err:
        read_outcomes(path, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 1, column)


def test_error_long_file_without_score(real_rows, tmp_path):
    path = write(long_frame(real_rows).drop(columns=["score"]), tmp_path / "rows.jsonl")
    with pytest.raises(DataError) as err:
        read_outcomes(path, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 1, "score")


def test_error_non_numeric_score_wide_csv(real_rows, tmp_path):
    path, line = corrupt_wide_csv(real_rows, tmp_path, 12, "claude-v2", "yes")
    with pytest.raises(DataError) as err:
        read_outcomes(path, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), line, "claude-v2")


def test_error_out_of_range_score_wide_csv(real_rows, tmp_path):
    path, line = corrupt_wide_csv(real_rows, tmp_path, 15, "Yi-34B-Chat", 2.0)
    with pytest.raises(DataError) as err:
        read_outcomes(path, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), line, "Yi-34B-Chat")


def test_error_non_numeric_score_long_jsonl(real_rows, tmp_path):
    long = long_frame(real_rows).astype(object)
    long.loc[30, "score"] = "high"
    path = write(long, tmp_path / "rows.jsonl")
    with pytest.raises(DataError) as err:
        read_outcomes(path, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 31, "score")


def test_error_out_of_range_score_parquet_row(real_rows, tmp_path):
    long = long_frame(real_rows)
    long.loc[40, "score"] = -1.0
    path = write(long, tmp_path / "rows.parquet")
    with pytest.raises(DataError) as err:
        read_outcomes(path, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 41, "score")


def test_error_empty_query_text(real_rows, tmp_path):
    wide = wide_frame(real_rows)
    wide.loc[4, "query"] = "   "
    path = write(wide, tmp_path / "rows.jsonl")
    with pytest.raises(DataError) as err:
        read_outcomes(path, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 5, "query")


def test_error_empty_query_cell_csv(real_rows, tmp_path):
    path, line = corrupt_wide_csv(real_rows, tmp_path, 20, "query", "")
    with pytest.raises(DataError) as err:
        read_outcomes(path, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), line, "query")


def test_error_non_text_query(real_rows, tmp_path):
    wide = wide_frame(real_rows).astype(object)
    wide.loc[2, "query"] = 42
    path = write(wide, tmp_path / "rows.jsonl")
    with pytest.raises(DataError) as err:
        read_outcomes(path, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 3, "query")


def test_error_negative_cost(real_rows, tmp_path):
    path, line = corrupt_wide_csv(real_rows, tmp_path, 17, "claude-v1|cost", -0.001)
    with pytest.raises(DataError) as err:
        read_outcomes(path, cost_unit="usd")
    assert (err.value.file, err.value.line, err.value.field) == (str(path), line,
                                                                  "claude-v1|cost")


def test_error_costs_without_cost_unit(real_rows, tmp_path):
    wide = wide_frame(real_rows)
    first_model = real_rows.models[0]
    wide[[c for c in wide.columns if c.endswith("|cost")]] = np.nan
    wide.loc[9, first_model + "|cost"] = 0.002  # the only cost in the file
    path = write(wide, tmp_path / "rows.csv")
    line = record_start_lines(path, [wide.loc[9, "query_id"]])[0]
    with pytest.raises(DataError) as err:
        read_outcomes(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), line,
                                                                  first_model + "|cost")
    long_path = write(long_frame(real_rows), tmp_path / "rows.parquet")
    with pytest.raises(DataError) as err:
        read_outcomes(long_path)
    assert (err.value.file, err.value.line, err.value.field) == (str(long_path), 1, "cost")
