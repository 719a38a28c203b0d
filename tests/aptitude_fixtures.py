"""A small CapSAT router that ships aptitude items, for the aptitude-run tests."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from capsat.capsat_model.config import CapsatConfig
from capsat.capsat_model.router import CapsatRouter
from train.config import TrainConfig
from train.data import prepare

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mmlu_pro_aptitude_items.jsonl"


@pytest.fixture(scope="module")
def tiny_router_dir(small_data_path, tiny_base, tmp_path_factory):
    """A small CapSAT router (tiny llama) over math, law, biology and history, saved with the
    fixture's items of those tasks as its aptitude_items.jsonl."""
    data = prepare(TrainConfig(data=small_data_path, k_per_task=3))
    config = dataclasses.replace(CapsatConfig(max_instruction_tokens=24, n_soft_tokens=2,
                                              connector_hidden=32, irt_dim=4, lora_r=2),
                                 base_model=tiny_base)
    router = CapsatRouter.create(config, data.candidates, data.aptitude.tasks, data.keywords)
    path = tmp_path_factory.mktemp("routers") / "tiny_capsat"
    router.save_pretrained(path)
    lines = [line for line in FIXTURE.read_text().splitlines()
             if json.loads(line)["task"] in router.tasks]
    (path / "aptitude_items.jsonl").write_text("\n".join(lines) + "\n")
    return str(path)
