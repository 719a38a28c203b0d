"""CapSAT training: recipe parsing, data preparation, stages, checkpoints and resume.

A tiny llama stands in for SmolLM2 (tests/tiny_llm.py); data are real MMLU-Pro outcomes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from capsat.capsat_model.config import CapsatConfig
from capsat.routers import Router
from data_builders.splits import make_split
from train.cli import parse
from train.config import TrainConfig
from train.data import prepare
from train.trainer import CapsatTrainer

REPO = Path(__file__).resolve().parent.parent
SMALL_MODEL = CapsatConfig(max_instruction_tokens=24, n_soft_tokens=2, connector_hidden=32,
                           irt_dim=4, lora_r=2)


def recipe(data_path, tiny_base, out, **overrides) -> tuple[CapsatConfig, TrainConfig]:
    values = dict(data=data_path, k_per_task=3, stage1_steps=2, stage2_steps=2, eval_every=2,
                  checkpoint_every=1, max_validation_queries=12, output_dir=str(out))
    values.update(overrides)
    import dataclasses

    return dataclasses.replace(SMALL_MODEL, base_model=tiny_base), TrainConfig(**values)


def cli_args(model: CapsatConfig, config: TrainConfig) -> list[str]:
    args = []
    for key, value in {**model.to_dict(), **config.__dict__}.items():
        if isinstance(value, bool):
            if value:
                args.append(f"--{key}")
        elif isinstance(value, list):
            if value:
                args += [f"--{key}", *map(str, value)]
        else:
            args += [f"--{key}", str(value)]
    return args


def test_recipe_yaml_and_overrides():
    model, config = parse(["--config", str(REPO / "train/recipes/cpu_default.yaml"),
                           "--stage2_steps", "7", "--lora_r", "4"])
    assert config.stage2_steps == 7 and model.lora_r == 4
    assert config.data == "mmlu_pro" and model.n_soft_tokens == 2
    with pytest.raises(ValueError, match="split"):
        TrainConfig(split="nope")


def test_prepare_keeps_core_items_out_and_agrees_with_eval_split(small_data_path, tiny_base,
                                                                  tmp_path, mmlu_small):
    _, config = recipe(small_data_path, tiny_base, tmp_path)
    data = prepare(config)
    core = data.aptitude.item_ids
    assert core and not core & set(data.train.query_ids)
    assert not core & set(data.validation.query_ids) and not core & set(data.split.test)
    group_ids = {q for ids in data.groups["query_ids"] for q in ids}
    assert group_ids <= set(data.train.query_ids)
    # The split is the one `capsat eval` makes with the same seed.
    assert data.split == make_split(mmlu_small.complete(), "query", seed=0)
    assert {c.name for c in data.candidates} == set(mmlu_small.models)
    for candidate in data.candidates:
        assert set(candidate.aptitude) == set(data.aptitude.tasks)


def _trainer(small_data_path, tiny_base, out, **overrides) -> CapsatTrainer:
    model, config = recipe(small_data_path, tiny_base, out, **overrides)
    return CapsatTrainer(model, config, prepare(config))


def test_stage_one_trains_heads_only(small_data_path, tiny_base, tmp_path):
    trainer = _trainer(small_data_path, tiny_base, tmp_path, stage1_steps=2, stage2_steps=1)
    before = trainer.router.network.trainable_state()
    trainer.train(stop_after=2)
    after_stage1 = trainer.router.network.trainable_state()
    lora = [k for k in before if k.startswith("lora.")]
    heads = [k for k in before if not k.startswith("lora.")]
    assert lora and heads
    assert all(torch.equal(before[k], after_stage1[k]) for k in lora)
    assert any(not torch.equal(before[k], after_stage1[k]) for k in heads)
    trainer.train()
    final = trainer.router.network.trainable_state()
    assert any(not torch.equal(after_stage1[k], final[k]) for k in lora)
    assert [h["stage"] for h in trainer.history] == ["initial", "heads", "heads", "lora"]


def test_resume_equals_uninterrupted_run(small_data_path, tiny_base, tmp_path):
    whole = _trainer(small_data_path, tiny_base, tmp_path / "whole")
    whole.train()
    first = _trainer(small_data_path, tiny_base, tmp_path / "cut")
    first.train(stop_after=3)  # killed after step 3's checkpoint
    resumed = _trainer(small_data_path, tiny_base, tmp_path / "cut", resume=True)
    assert resumed.latest_checkpoint().name == "step-0000003"
    resumed.train()
    a, b = whole.router.network.trainable_state(), resumed.router.network.trainable_state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h.get("loss") for h in whole.history] == [h.get("loss") for h in resumed.history]
    # Only the newest checkpoints are kept, and no temporary folder is left behind.
    names = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert names == ["step-0000003", "step-0000004"]


def test_training_lowers_the_loss_and_moves_validation(small_data_path, tiny_base, tmp_path):
    """A real (tiny) run: the loss on the groups it trained on falls, and validation moves off
    the untrained router's figures (step 0) toward a better log-loss. Seconds on the CPU."""
    trainer = _trainer(small_data_path, tiny_base, tmp_path, stage1_steps=10, stage2_steps=30,
                       groups_per_step=4, eval_every=20, checkpoint_every=40, lr_heads=3e-3)
    seen = [g for step in range(10) for g in trainer.groups_for(step)]

    def loss_on_seen():
        trainer.network.eval()
        with torch.no_grad():
            return {k: float(v) for k, v in trainer.losses(seen).items()}

    before = loss_on_seen()
    trainer.train()
    after = loss_on_seen()
    assert after["loss"] < before["loss"] - 0.1, (before, after)
    assert after["pointwise"] < before["pointwise"]
    initial, final = trainer.history[0], trainer.history[-1]
    assert initial["step"] == 0 and final["step"] == 40
    assert final["val_log_loss"] < initial["val_log_loss"] - 0.05
    assert final["val_auc"] != initial["val_auc"]


def test_best_router_is_saved_and_loads(small_data_path, tiny_base, tmp_path, mmlu_small):
    trainer = _trainer(small_data_path, tiny_base, tmp_path)
    result = trainer.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4]
    validated = {r["step"]: r["val_auc"] for r in log if "val_auc" in r}
    assert set(validated) == {0, 2, 4}
    # The kept router is the one with the best validation AUC among the validated steps.
    assert result["best"]["step"] == max(validated, key=lambda s: (validated[s], -s))
    router = Router.load(tmp_path / "best")
    probs = router.predict_proba(mmlu_small.texts[:3])
    assert probs.shape == (3, len(mmlu_small.models))
    # Its record of what it saw: train and validation samples and the core items.
    seen = set(router.fitted_on.query_ids)
    assert set(trainer.data.train.query_ids) | set(trainer.data.aptitude.item_ids) <= seen
    assert not seen & set(trainer.data.split.test)
    # The model card carries the validation figures of the kept step.
    card = (tmp_path / "best" / "README.md").read_text()
    assert "## Evaluation" in card and f"step {result['best']['step']}" in card


def test_time_limit_stops_with_a_validated_checkpoint(small_data_path, tiny_base, tmp_path):
    trainer = _trainer(small_data_path, tiny_base, tmp_path, max_minutes=1e-9)
    result = trainer.train()
    assert result["step"] == 1 and not result["completed"]
    assert "val_auc" in trainer.history[-1]
    assert (tmp_path / "checkpoints" / "step-0000001").is_dir()
    assert (tmp_path / "best" / "config.json").exists()
    with pytest.raises(ValueError, match="max_minutes"):
        recipe(small_data_path, tiny_base, tmp_path, max_minutes=-1)


def test_time_limit_is_met_including_the_final_validation(small_data_path, tiny_base,
                                                          tmp_path):
    """The run ends within max_minutes: it stops early enough to validate, checkpoint and save
    the last step inside the limit (not after it)."""
    limit = 4.0
    trainer = _trainer(small_data_path, tiny_base, tmp_path, stage1_steps=2, stage2_steps=5000,
                       eval_every=10, checkpoint_every=10, max_validation_queries=60,
                       max_minutes=limit / 60)
    started = time.perf_counter()
    result = trainer.train()
    elapsed = time.perf_counter() - started
    assert not result["completed"] and result["step"] > 2
    assert elapsed <= limit, elapsed
    assert "val_auc" in trainer.history[-1]
    assert trainer.latest_checkpoint().name == f"step-{result['step']:07d}"


@pytest.mark.slow
def test_accelerate_two_processes_and_sigkill_resume(small_data_path, tiny_base, tmp_path):
    """`capsat train` under accelerate with 2 CPU processes (gloo); then a single-process run
    killed with SIGKILL and resumed ends with the weights of an uninterrupted run."""
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    model, config = recipe(small_data_path, tiny_base, tmp_path / "ddp")
    ddp = subprocess.run([sys.executable, "-m", "capsat.cli", "train", "--config",
                          str(REPO / "train/recipes/cpu_default.yaml"),
                          "--accelerate-config", "cpu_2proc", *cli_args(model, config)],
                         env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["step"] == 4
    assert (tmp_path / "ddp" / "best" / "adapter" / "adapter_model.safetensors").exists()

    steps = dict(stage1_steps=2, stage2_steps=6)
    model, whole_cfg = recipe(small_data_path, tiny_base, tmp_path / "whole", **steps)
    subprocess.run([sys.executable, "-m", "train", *cli_args(model, whole_cfg)], env=env,
                   check=True, capture_output=True, timeout=600, cwd=REPO)
    model, cut_cfg = recipe(small_data_path, tiny_base, tmp_path / "cut", **steps)
    proc = subprocess.Popen([sys.executable, "-m", "train", *cli_args(model, cut_cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    checkpoint = tmp_path / "cut" / "checkpoints" / "step-0000003"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists()
    done = sorted((tmp_path / "cut" / "checkpoints").glob("step-*"))
    assert done[-1].name < "step-0000008", "the run finished before it could be killed"
    subprocess.run([sys.executable, "-m", "train", *cli_args(model, cut_cfg), "--resume"],
                   env=env, check=True, capture_output=True, timeout=600, cwd=REPO)
    final = "checkpoints/step-0000008/trainable.safetensors"
    a = load_file(str(tmp_path / "whole" / final))
    b = load_file(str(tmp_path / "cut" / final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_no_progress_silences_the_training_bars(small_data_path, tiny_base, tmp_path, capfd):
    """Item 21: `capsat train --no-progress` (progress: false) draws no bar, the validation's
    scoring bar included; the default draws the training bar."""
    _trainer(small_data_path, tiny_base, tmp_path / "quiet", progress=False,
             max_validation_queries=80).train()
    quiet = capfd.readouterr().err
    assert "training CapSAT" not in quiet and "capsat: scoring" not in quiet
    _trainer(small_data_path, tiny_base, tmp_path / "loud").train()
    assert "training CapSAT" in capfd.readouterr().err
