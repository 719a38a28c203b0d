"""A small CapSAT router that ships aptitude items, for the aptitude-run tests."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from capsat.capsat_model.config import CapsatConfig
from capsat.capsat_model.router import CapsatRouter
from train.config import TrainConfig
from train.data import prepare

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mmlu_pro_aptitude_items.jsonl"


@pytest.fixture(scope="module")
def tiny_router_dir(small_data_path, tiny_base, tmp_path_factory):
    """A small CapSAT router (tiny llama) over math, law, biology and history, saved with its
    own aptitude items (2 per task, graded against MMLU-Pro's keys)."""
    data = prepare(TrainConfig(data=small_data_path, k_per_task=2), progress=False)
    config = dataclasses.replace(CapsatConfig(max_instruction_tokens=24,
                                              instruction_head_tokens=12, connector_hidden=32,
                                              capability_dim=32, encoder_hidden=32, irt_dim=4,
                                              lora_r=2), base_model=tiny_base)
    router = CapsatRouter.create(config, data.bank, data.train_models, data.tasks,
                                 aptitude=data.aptitude, aptitude_items=data.aptitude_items)
    path = tmp_path_factory.mktemp("routers") / "tiny_capsat"
    router.save_pretrained(path)
    return str(path)
