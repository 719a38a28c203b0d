"""RouterBench (zero-shot rows as split by RouterDC): 3,164 queries x 11 LLMs, USD cost, responses.

Raw files (``<raw>/routerbench/``): {arc_challenge,mbpp,winograde}_{train,test}.csv. Columns:
an unnamed index, sample_id, prompt (a Python-list literal holding the prompt string, parsed
with ``ast.literal_eval``), eval_name, then per model ``<model>`` (0/1), ``<model>|model_response``
(also a list literal holding one string) and ``<model>|total_cost`` (USD for that call).
Model names are the part of the column name after the last "/". Task = eval_name
(arc-challenge, mbpp, winogrande). Published train and test are pooled.

Changes from the raw files:

* Few-shot prefix stripped. Every arc-challenge and winogrande prompt starts with the same 5
  solved exemplars (checked: one distinct prefix per benchmark; the build fails if that stops
  being true). Only the final item -- the actual question with its options and answer
  instruction -- is stored as the query, because the router's encoder (MiniLM, 256 tokens)
  would otherwise see only the exemplars and cut off the question. mbpp has no exemplars.
* 14 arc-challenge rows dropped. Their prompt list holds two items (the same prompt twice),
  only gpt-3.5-turbo-1106 is scored on them and the other 10 scores are blank. Each repeats
  the sample_id of a normal row (in the same or the other published split) whose
  gpt-3.5-turbo-1106 score is the blank one, so those 14 scores stay missing (never 0). These
  are also the only repeated sample_ids: 6 cross the published train/test split, 8 are within
  one split. After the drop every sample_id is unique (identical repeated rows would be kept
  once, differing ones would get ids suffixed with their split and line).
* Responses are unwrapped from their one-item list literal.

Two mbpp questions occur twice with identical text but distinct sample_ids (distinct problems
with different reference tests); both are kept.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..outcomes import OutcomeTable
from .generic import read_records

PROVENANCE = ("RouterBench data set (withmartian/routerbench, MIT license) as split and "
              "published in github.com/shuhao02/RouterDC commit "
              "0e63989c5bf4363330b8a4616386e3f7f116d9f8, datasets/"
              "{arc_challenge,mbpp,winograde}_{train,test}.csv. License: MIT. Train and test "
              "pooled; 5-shot exemplar prefix stripped from arc-challenge and winogrande "
              "prompts; 14 duplicate two-turn gpt-3.5-only arc rows dropped.")

FILES = [f"{bench}_{split}.csv" for bench in ("arc_challenge", "mbpp", "winograde")
         for split in ("train", "test")]
SCORE_SUFFIX_COST = "|total_cost"
SCORE_SUFFIX_RESPONSE = "|model_response"
# A solved exemplar ends with its answer letter and a blank line; the query follows the last.
EXEMPLAR_END = re.compile(r"Answer:\n[A-E]\n\n")


def short_name(column: str) -> str:
    return column.rsplit("/", 1)[-1]


def parse_list_literal(text, *, file: str, line: int, field: str) -> list[str]:
    try:
        value = ast.literal_eval(text) if isinstance(text, str) else None
    except (ValueError, SyntaxError) as err:
        raise DataError(f"not a Python list literal ({err})", file=file, line=line,
                        field=field) from err
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise DataError(f"expected a non-empty list of strings, got {str(text)[:60]!r}",
                        file=file, line=line, field=field)
    return value


def split_few_shot(prompt: str) -> tuple[str, str]:
    """(exemplar prefix, final item); the prefix is '' when the prompt has no exemplars."""
    ends = list(EXEMPLAR_END.finditer(prompt))
    cut = ends[-1].end() if ends else 0
    return prompt[:cut], prompt[cut:]


def read_file(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """One raw CSV -> rows with parsed prompt parts, and the model score columns."""
    records = read_records(path)
    frame, file = records.frame, str(path)
    models = [c for c in frame.columns if c + SCORE_SUFFIX_COST in frame.columns]
    needed = ["sample_id", "prompt", "eval_name"] + models + [
        m + suffix for m in models for suffix in (SCORE_SUFFIX_COST, SCORE_SUFFIX_RESPONSE)]
    missing = [c for c in needed if c not in frame.columns]
    if missing or not models:
        raise DataError(f"missing column(s) {missing or ['<model>|total_cost']}", file=file,
                        line=records.header_line, field=(missing or ["|total_cost"])[0])
    frame = frame.assign(line=records.lines, file=file,
                         split=path.stem.rsplit("_", 1)[-1])
    frame["prompt_items"] = [parse_list_literal(p, file=file, line=int(n), field="prompt")
                             for p, n in zip(frame["prompt"], frame["line"])]
    for model in models:
        column = model + SCORE_SUFFIX_RESPONSE
        responses = []
        for text, n in zip(frame[column], frame["line"]):
            if text is None:
                responses.append(None)
                continue
            items = parse_list_literal(text, file=file, line=int(n), field=column)
            if len(items) != 1:
                raise DataError(f"expected one response, got {len(items)}", file=file,
                                line=int(n), field=column)
            responses.append(items[0])
        frame[column] = responses
    return frame, models


def strip_shared_prefix(frame: pd.DataFrame) -> pd.Series:
    """The final item of each prompt, after checking each benchmark has one exemplar prefix."""
    parts = frame["prompt_items"].str[0].map(split_few_shot)
    prefix, query = parts.str[0], parts.str[1]
    for task, rows in frame.groupby("eval_name", sort=False).groups.items():
        task_prefix = prefix.loc[rows]
        odd = rows[(task_prefix != task_prefix.iloc[0]).to_numpy()]
        if len(odd):
            first, bad = frame.loc[rows[0]], frame.loc[odd[0]]
            raise DataError(f"{task}: few-shot prefix differs from that of {first['file']} line "
                            f"{first['line']}, so it cannot be stripped as a constant",
                            file=bad["file"], line=int(bad["line"]), field="prompt")
    return query


def deduplicate(frame: pd.DataFrame, content: list[str]) -> pd.DataFrame:
    """One row per sample_id: identical repeats are kept once, differing ones get unique ids."""
    frame = frame[~frame.duplicated(["sample_id"] + content)]
    clash = frame["sample_id"].duplicated(keep=False)
    frame.loc[clash, "sample_id"] = (frame.loc[clash, "sample_id"] + "@" + frame.loc[clash, "split"]
                                     + "-line" + frame.loc[clash, "line"].astype(str))
    return frame


def build(raw_dir: Path) -> OutcomeTable:
    src = Path(raw_dir) / "routerbench"
    frames, models = [], None
    for name in FILES:
        frame, file_models = read_file(src / name)
        if models is not None and sorted(file_models) != sorted(models):
            raise DataError(f"model columns differ from {FILES[0]}: {file_models}",
                            file=str(src / name), line=1)
        models = models or file_models
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)

    # Two-item prompts: the prompt sent twice, scored for one model only (see module docstring).
    single = frame["prompt_items"].map(len) == 1
    frame = frame[single].copy()
    frame["query"] = strip_shared_prefix(frame)
    value_columns = models + [m + s for m in models
                              for s in (SCORE_SUFFIX_COST, SCORE_SUFFIX_RESPONSE)]
    frame = deduplicate(frame, ["query", "eval_name"] + value_columns)
    frame["query_id"] = "routerbench/" + frame["sample_id"]

    parts = []
    for model in models:
        part = frame[["query_id", "query", "eval_name", "file", "line"]].assign(
            model=short_name(model), score=frame[model], cost=frame[model + SCORE_SUFFIX_COST],
            response=frame[model + SCORE_SUFFIX_RESPONSE], order=np.arange(len(frame)))
        parts.append(part[part["score"].notna()])  # blank score = no record for that model
    long = pd.concat(parts, ignore_index=True).sort_values("order", kind="stable")
    long = long.rename(columns={"eval_name": "task"})
    if long["model"].nunique() != len(models):
        raise DataError(f"model names clash after dropping their prefixes: {models}",
                        file=str(src / FILES[0]), line=1)
    info = {short_name(m): {"source_column": m} for m in models}
    # Rows come from six files, so validate with row ordinals and report the row's own file/line.
    ordinal = np.arange(1, len(long) + 1)
    try:
        return OutcomeTable.from_long(
            long[["query_id", "query", "task", "model", "score", "cost", "response"]],
            name="routerbench", cost_unit="usd", model_info=info, provenance=PROVENANCE,
            line_numbers=ordinal)
    except DataError as err:
        if err.line is None:
            raise DataError(err.reason, file=str(src), field=err.field) from err
        row = long.iloc[err.line - 1]
        raw_column = {"score": "", "cost": SCORE_SUFFIX_COST, "response": SCORE_SUFFIX_RESPONSE}
        field = (info[row["model"]]["source_column"] + raw_column[err.field]
                 if err.field in raw_column else err.field)
        raise DataError(err.reason, file=row["file"], line=int(row["line"]),
                        field=field) from err
