"""LLMRouter (DCRouter data): 5,989 unique queries from 14 benchmarks x 9 open LLMs, model cards.

Raw files (``<raw>/llmrouter/``): dcrouter_matrix.csv (one row per published query: split, row,
task_name, metric, in_train_too, question, then one score column per model) and models.json
(model cards with prices). Query text is the question as published; task is ``task_name``.
Scores are kept as published: 0/1, except commongen (a fractional coverage score in [0, 1]).

The published train (5,608) and test (500) are pooled -- capsat makes its own splits. The
published split leaks: 119 test questions also occur, with the same text, in train. For each
such question the test copy is dropped and the train copy kept, so every question text occurs
once (6,108 -> 5,989 queries). The two copies' scores differ for 50 of the 119 questions
(gpqa 34, human_eval 12, mbpp 4; 989 of the 1,071 duplicated cells agree), i.e. the models
were re-run on the copy, so the copies are not interchangeable records.

No per-call cost exists. The model cards of the 9 scored models go into ``model_info``: size,
feature (free-text description), input_price and output_price (USD per million tokens), api_id
and provider. Values are as published; note that some descriptions quote a price different from
the price fields (e.g. qwen2.5-7b-instruct: text says $0.30, fields say 0.20).
"""
from __future__ import annotations

import json
from pathlib import Path


from ..errors import DataError
from ..outcomes import OutcomeTable
from .generic import read_records

PROVENANCE = ("LLMRouter DCRouter data, github.com/ulab-uiuc/LLMRouter commit "
              "4e7a796942ce26e9d5f2b93191c7c2585c99c2e3, files "
              "data/dcrouter_preprocessed/{train,test}.json, data/example_data/query_data/*.jsonl "
              "and data/example_data/llm_candidates/default_llm.json. License: MIT. Published "
              "train and test pooled; the test copy of each question also in train dropped.")

META_COLUMNS = ["split", "row", "task_name", "metric", "in_train_too", "question"]
SPLIT_ORDER = ("train", "test")  # earlier split wins when a question text occurs twice
CARD_FIELDS = {"size": "size", "feature": "feature", "input_price": "input_price",
               "output_price": "output_price", "model": "api_id", "service": "provider"}


def load_model_cards(path: Path, models: list[str]) -> dict[str, dict]:
    if not path.exists():
        raise DataError("no such file", file=str(path))
    try:
        cards = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", file=str(path), line=err.lineno) from err
    info = {}
    for model in models:
        if model not in cards:
            raise DataError(f"no model card for scored model {model!r}", file=str(path),
                            field=model)
        missing = [k for k in CARD_FIELDS if k not in cards[model]]
        if missing:
            raise DataError(f"model card of {model!r} lacks {missing}", file=str(path),
                            field=missing[0])
        info[model] = {ours: cards[model][theirs] for theirs, ours in CARD_FIELDS.items()}
        info[model]["price_unit"] = "usd_per_million_tokens"
    return info


def build(raw_dir: Path) -> OutcomeTable:
    src = Path(raw_dir) / "llmrouter"
    matrix_path = src / "dcrouter_matrix.csv"
    records = read_records(matrix_path)
    frame, lines = records.frame, records.lines
    missing = [c for c in META_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}", file=str(matrix_path),
                        line=records.header_line, field=missing[0])
    unknown_split = ~frame["split"].isin(SPLIT_ORDER)
    if unknown_split.any():
        i = int(unknown_split.to_numpy().argmax())
        raise DataError(f"split must be one of {SPLIT_ORDER}, got {frame['split'].iloc[i]!r}",
                        file=str(matrix_path), line=int(lines[i]), field="split")
    models = [c for c in frame.columns if c not in META_COLUMNS]

    frame = frame.assign(line=lines, split_rank=frame["split"].map(SPLIT_ORDER.index))
    frame = frame.sort_values(["split_rank", "line"], kind="stable")
    frame = frame.drop_duplicates("question", keep="first")  # the leaked test copies

    frame["query_id"] = "llmrouter/" + frame["split"] + "/" + frame["row"].astype(str)
    long = frame.melt(id_vars=["query_id", "question", "task_name", "line"], value_vars=models,
                      var_name="model", value_name="score")
    long = long.rename(columns={"question": "query", "task_name": "task"})
    long = long.sort_values(["line"], kind="stable")
    return OutcomeTable.from_long(long[["query_id", "query", "task", "model", "score"]],
                                  name="llmrouter",
                                  model_info=load_model_cards(src / "models.json", models),
                                  provenance=PROVENANCE, file=str(matrix_path),
                                  line_numbers=long["line"].to_numpy())
