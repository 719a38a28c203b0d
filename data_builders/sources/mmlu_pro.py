"""MMLU-Pro: 12,032 questions x 29 LLMs (official 5-shot CoT evaluation outputs).

Raw files (``<raw>/mmlu_pro/``): questions.jsonl, correctness.csv, output_chars.csv.
Query text is the question followed by its lettered options, as the models saw it; ``answer``
is the key's letter (what aptitude items are graded against). Cost is
the character length of the model's output (no prices exist for this set; base models
continue the few-shot pattern, so their lengths are not comparable with chat models').
A blank correctness cell (no record for that model) stays missing.
"""
from __future__ import annotations

import string
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..jsonl import iter_jsonl
from ..outcomes import OutcomeTable

PROVENANCE = ("MMLU-Pro official per-model evaluation outputs, github.com/TIGER-AI-Lab/MMLU-Pro "
              "commit f418b116db00b065c2aea046518d8fcf74d39872, eval_results/; questions from "
              "the MMLU-Pro dataset. License: Apache-2.0.")


def format_question(question: str, options: list[str]) -> str:
    letters = string.ascii_uppercase
    lines = [question.strip()] + [f"{letters[i]}) {opt}" for i, opt in enumerate(options)]
    return "\n".join(lines)


def build(raw_dir: Path) -> OutcomeTable:
    src = Path(raw_dir) / "mmlu_pro"
    qpath = src / "questions.jsonl"
    if not qpath.exists():
        raise DataError("no such file", file=str(qpath))
    texts, tasks, answers = {}, {}, {}
    for _, row in iter_jsonl(qpath):
        qid = str(row["question_id"])
        texts[qid] = format_question(row["question"], row["options"])
        tasks[qid] = row["category"]
        answers[qid] = str(row["answer"])
    correct = pd.read_csv(src / "correctness.csv", dtype={"question_id": str})
    chars = pd.read_csv(src / "output_chars.csv", dtype={"question_id": str})
    models = [c for c in correct.columns if c not in ("question_id", "category")]
    long = correct.melt(id_vars=["question_id"], value_vars=models, var_name="model",
                        value_name="score").dropna(subset=["score"])
    cost = chars.melt(id_vars=["question_id"], value_vars=models, var_name="model",
                      value_name="cost")
    long = long.merge(cost, on=["question_id", "model"], how="left")
    long = long.rename(columns={"question_id": "query_id"})
    long["query"] = long["query_id"].map(texts)
    long["task"] = long["query_id"].map(tasks)
    long["answer"] = long["query_id"].map(answers)
    long["query_id"] = "mmlu_pro/" + long["query_id"]
    columns = ["query_id", "query", "task", "model", "score", "cost", "answer"]
    return OutcomeTable.from_long(long[columns],
                                  name="mmlu_pro", cost_unit="output_chars",
                                  provenance=PROVENANCE, file=str(src / "correctness.csv"))
