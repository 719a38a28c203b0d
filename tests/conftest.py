"""Shared fixtures: small slices of the real shipped data, and an isolated embedding cache."""
from __future__ import annotations

import os

import pytest

from data_builders.sources import load_outcomes

SMALL_MODELS = ["Meta-Llama-3_1-8B-Instruct", "Phi-3-mini-4k-instruct", "mathstral-7B",
                "gemma-7b", "Qwen1.5-7B-Chat"]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Embeddings go to a per-session cache, never the user's."""
    path = tmp_path_factory.mktemp("capsat-cache")
    old = os.environ.get("CAPSAT_CACHE")
    os.environ["CAPSAT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CAPSAT_CACHE", None)
    else:
        os.environ["CAPSAT_CACHE"] = old


@pytest.fixture(scope="session")
def mmlu_pro():
    return load_outcomes("mmlu_pro")


@pytest.fixture(scope="session")
def mmlu_small(mmlu_pro):
    """Real MMLU-Pro outcomes: 4 tasks x 60 questions, the five small open models, complete."""
    table = mmlu_pro.subset(models=SMALL_MODELS).complete()
    tasks = ["math", "law", "biology", "history"]
    ids = []
    for task in tasks:
        ids += list(table.queries.index[table.queries["task"] == task][:60])
    return table.subset(ids)


@pytest.fixture(scope="session")
def small_data_path(mmlu_small, tmp_path_factory):
    """``mmlu_small`` as an outcome file, for code that loads data by path (train, CLI)."""
    return str(mmlu_small.save(tmp_path_factory.mktemp("data") / "mmlu_small.parquet"))


@pytest.fixture(scope="session")
def tiny_base(mmlu_small, tmp_path_factory):
    """A tiny llama + BPE tokenizer saved as a local base-model folder (offline, seconds)."""
    from tiny_llm import tiny_llm

    model, tokenizer = tiny_llm(mmlu_small.texts)
    path = tmp_path_factory.mktemp("tiny-base")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
