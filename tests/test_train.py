"""CapSAT training: recipe parsing, data preparation, the two stages, checkpoints and resume.

A tiny llama stands in for SmolLM2 (tests/tiny_llm.py); data are real MMLU-Pro outcomes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from capsat.capsat_model.config import CapsatConfig
from capsat.evaluation import metrics as M
from capsat.routers import Router
from data_builders.splits import make_split
from train.cli import parse
from train.config import TrainConfig
from train.data import prepare, validation_items
from train.trainer import START_BATCH, CapsatTrainer

REPO = Path(__file__).resolve().parent.parent
SMALL_MODEL = CapsatConfig(max_instruction_tokens=24, instruction_head_tokens=12,
                           n_soft_tokens=2, connector_hidden=32, capability_dim=32,
                           encoder_hidden=32, irt_dim=4, lora_r=2)


def recipe(data_path, tiny_base, out, **overrides) -> tuple[CapsatConfig, TrainConfig]:
    values = dict(data=data_path, k_per_task=3, encoder_steps=2, llm_steps=2, eval_every=2,
                  llm_eval_every=2, checkpoint_every=1, max_validation_queries=12,
                  queries_per_step=8, llm_queries_per_step=2, evidence_max=60, neighbours=5,
                  output_dir=str(out))
    model = {k: overrides.pop(k) for k in list(overrides)
             if k in CapsatConfig.__dataclass_fields__}
    values.update(overrides)
    return (dataclasses.replace(SMALL_MODEL, base_model=tiny_base, **model),
            TrainConfig(**values))


def cli_args(model: CapsatConfig, config: TrainConfig) -> list[str]:
    args = []
    for key, value in {**model.to_dict(), **config.__dict__}.items():
        if value is None:
            continue  # a field's None is its default; the command line has no spelling for it
        if isinstance(value, list):
            if value:
                args += [f"--{key}", *map(str, value)]
        else:
            args += [f"--{key}", str(value)]
    return args


def test_recipe_yaml_and_overrides():
    model, config = parse(["--config", str(REPO / "train/recipes/cpu_default.yaml"),
                           "--llm-steps", "7", "--lora_r", "4"])
    assert config.llm_steps == 7 and model.lora_r == 4
    assert config.data == "mmlu_pro" and model.n_soft_tokens == 2
    with pytest.raises(ValueError, match="split"):
        TrainConfig(split="nope")


def test_prepare_keeps_loss_queries_off_core_items_and_agrees_with_eval(small_data_path,
                                                                        mmlu_small):
    data = prepare(TrainConfig(data=small_data_path, k_per_task=3), progress=False)
    core = data.aptitude.item_ids
    loss = {data.bank.item_ids[r] for r in data.loss_rows}
    assert core and not core & loss
    assert core <= set(data.bank.item_ids)  # new models are described on bank items
    assert not core & set(data.validation.query_ids) and not core & set(data.split.test)
    assert set(data.bank.item_ids) == set(data.split.train)
    # The split is the one `capsat eval` makes with the same seed.
    assert data.split == make_split(mmlu_small.complete(), "query", seed=0)
    # Neighbours are other items, never the item itself or a same-text twin.
    assert not (data.neighbours == np.arange(len(data.bank.item_ids))[:, None]).any()
    assert {i.id for i in data.aptitude_items} == core


def test_held_out_models_labels_choose_no_aptitude_item(mmlu_small, tmp_path):
    """Model split: the aptitude test is chosen on the train models' train queries only, by
    training and by every other entry point alike. Turning the held-out models' labels upside
    down changes no item."""
    from data_builders.aptitude import select_core_items
    from data_builders.experiment import prepare_experiment

    held = ["mathstral-7B", "gemma-7b"]
    flipped = dataclasses.replace(mmlu_small, scores=mmlu_small.scores.copy())
    flipped.scores[held] = 1.0 - flipped.scores[held]
    path = str(mmlu_small.save(tmp_path / "real.parquet"))
    flipped_path = str(flipped.save(tmp_path / "flipped.parquet"))
    chosen = []
    for data in (path, flipped_path):
        config = TrainConfig(data=data, split="model", held_out=held, k_per_task=3)
        trained_on = prepare(config, progress=False).aptitude.item_ids
        assert trained_on == prepare_experiment(data, "model", held_out=held,
                                                k_per_task=3).aptitude.item_ids
        chosen.append(trained_on)
    assert chosen[0] == chosen[1]
    # The flip is not a no-op: on all models' labels the choice would move.
    everyone = mmlu_small.subset(list(make_split(mmlu_small, "model", held_out_models=held).train))
    assert (select_core_items(everyone, 3, 0).item_ids
            != select_core_items(flipped.subset(list(everyone.query_ids)), 3, 0).item_ids)


def _trainer(small_data_path, tiny_base, out, **overrides) -> CapsatTrainer:
    model, config = recipe(small_data_path, tiny_base, out, **overrides)
    return CapsatTrainer(model, config, prepare(config, progress=False))


def test_a_step_never_reads_its_own_loss_queries(small_data_path, tiny_base, tmp_path):
    trainer = _trainer(small_data_path, tiny_base, tmp_path, pseudo_models=3)
    groups = trainer.data.text_groups
    for step in range(5):
        rows, pool, evidence, labels = trainer.sample(step)
        # Neither a loss query nor a same-text twin of one is evidence in its own step.
        assert not set(groups[pool]) & set(groups[rows])
        assert len(set(rows)) == len(rows) and set(rows) <= set(trainer.data.loss_rows)
        m = len(trainer.data.train_models)
        assert labels.shape == (len(rows), m + 3) and evidence.n_candidates == m + 3
        # Some candidates read a sample of the pool (aptitude mode), not all of it.
        sizes = evidence.mask.sum(dim=1)
        assert sizes.min() < sizes.max()
    a = trainer.sample(3)
    b = trainer.sample(3)
    assert (a[0] == b[0]).all() and torch.equal(a[2].mask, b[2].mask)  # seeded per step


def test_every_candidate_is_read_against_a_pool_without_itself(small_data_path, tiny_base,
                                                               tmp_path):
    """The pool's success on the evidence (and per task, the difficulty's baseline) leaves
    out a training model's own outcomes, and a pseudo-model's two parents: its own outcomes
    never pose as how hard the items are."""
    trainer = _trainer(small_data_path, tiny_base, tmp_path, pseudo_models=3)
    bank, n_tasks = trainer.data.bank, len(trainer.data.tasks)
    m = len(trainer.data.train_models)

    def pool_without(models):
        success = bank.pool_success_without(models)
        return (torch.from_numpy(success).float(),
                torch.from_numpy(bank.task_means(success, n_tasks)).float())

    for j in range(m):
        success, per_task = pool_without([j])
        torch.testing.assert_close(success, trainer.pool_loo[j])
        torch.testing.assert_close(per_task, trainer.task_success[j])
    pairs = {(a, b): pool_without([a, b]) for a in range(m) for b in range(a + 1, m)}
    _, pool, evidence, _ = trainer.sample(2)
    everyone = torch.from_numpy(bank.pool_sum[pool] / bank.pool_count[pool]).float()
    for row in range(m, m + 3):
        found = [key for key, (success, per_task) in pairs.items()
                 if torch.allclose(evidence.pool_success[row], success[pool])
                 and torch.allclose(evidence.task_success[row], per_task)]
        assert found, f"pseudo-model {row} is read against no pool without two parents"
        assert not torch.allclose(evidence.pool_success[row], everyone)
    # The shared difficulty (the start's shift) reads the whole pool, nobody left out.
    torch.testing.assert_close(evidence.shared_success[0], everyone)
    torch.testing.assert_close(evidence.shared_task_success[0], torch.from_numpy(
        bank.task_means(bank.pool_sum / bank.pool_count, n_tasks)).float())


def test_the_difficulty_s_ridge_fit_leaves_out_the_step_s_loss_queries(small_data_path,
                                                                       tiny_base, tmp_path):
    """With ``difficulty_ridge``, every candidate of a step (pseudo-models too) carries the
    ridge fit of its own pool's success over the bank without the step's loss queries and
    their twins, worked by hand; the fit with them differs (a loss query's own difficulty
    never reaches its step)."""
    penalty = 2.0
    trainer = _trainer(small_data_path, tiny_base, tmp_path, pseudo_models=2, difficulty_k=4,
                       difficulty_ridge=penalty)
    bank, n_tasks = trainer.data.bank, len(trainer.data.tasks)
    m = len(trainer.data.train_models)
    pairs = [(a, b) for a in range(m) for b in range(a + 1, m)]
    rows, pool, evidence, _ = trainer.sample(1)
    own = np.isin(trainer.data.text_groups, trainer.data.text_groups[rows])
    x = bank.embeddings.astype(np.float64)

    def fit(success, keep):
        levels = bank.task_means(success, n_tasks)
        target = success - levels[bank.tasks]
        return np.linalg.solve(x[keep].T @ x[keep] + penalty * np.eye(x.shape[1]),
                               x[keep].T @ target[keep])

    assert evidence.difficulty_weights.shape == (m + 2, x.shape[1])
    for j in range(m):
        success = bank.pool_success_without([j])
        np.testing.assert_allclose(evidence.difficulty_weights[j].numpy(), fit(success, ~own),
                                   atol=1e-4)
        assert np.abs(fit(success, np.ones_like(own)) - fit(success, ~own)).max() > 1e-4
    for row in range(m, m + 2):
        assert any(np.allclose(evidence.difficulty_weights[row].numpy(),
                               fit(bank.pool_success_without(list(pair)), ~own), atol=1e-4)
                   for pair in pairs), f"pseudo-model {row}: no fit of a pool without parents"
    # ... and the whole pool's fit, shared by every candidate, leaves them out too.
    np.testing.assert_allclose(evidence.shared_difficulty_weights[0].numpy(),
                               fit(bank.pool_sum / bank.pool_count, ~own), atol=1e-4)
    with pytest.raises(ValueError, match="difficulty_ridge needs difficulty_k"):
        recipe(small_data_path, tiny_base, tmp_path, difficulty_k=0, difficulty_ridge=penalty)


def test_a_pool_can_leave_out_a_model_s_whole_family(small_data_path, tiny_base, tmp_path):
    """With pool groups (``pool_without_family``), a training model's pool leaves out every
    model of its group, and an onboarded model joins a group of its own; the groups survive save and load. Only split=family takes the option."""
    from capsat.capsat_model.bank import EvidenceBank

    with pytest.raises(ValueError, match="pool_without_family"):
        TrainConfig(split="query", pool_without_family=True)
    trainer = _trainer(small_data_path, tiny_base, tmp_path, split="family",
                       held_out=["gemma"], pool_without_family=True)
    bank, models = trainer.data.bank, trainer.data.train_models
    assert bank.pool_groups is not None and len(set(bank.pool_groups)) == len(models)
    torch.testing.assert_close(trainer.pool_loo[0],
                               torch.from_numpy(bank.pool_success_without([0])).float())
    # Two models of one group: each is read against the pool without both.
    grouped = EvidenceBank(bank.item_ids, bank.embeddings, bank.tasks, bank.pool_sum,
                           bank.pool_count, bank.outcomes, bank.trained,
                           np.array([0, 0] + list(range(1, len(models) - 1))))
    others = np.nanmean(bank.outcomes[2:], axis=0)
    np.testing.assert_allclose(grouped.pool_success_without([0]), others)
    np.testing.assert_allclose(grouped.pool_success()[1], others)
    np.testing.assert_allclose(grouped.pool_success()[2], bank.pool_success_without([2]))
    assert not np.allclose(others, bank.pool_success_without([0]))
    grouped.add({bank.item_ids[0]: 1.0})
    assert grouped.pool_groups[-1] not in grouped.pool_groups[:-1]
    loaded = EvidenceBank.from_arrays(grouped.item_ids, grouped.arrays())
    np.testing.assert_array_equal(loaded.pool_groups, grouped.pool_groups)
    assert EvidenceBank.from_arrays(bank.item_ids, bank.arrays()).pool_groups is not None
    plain = _trainer(small_data_path, tiny_base, tmp_path / "plain", split="family",
                     held_out=["gemma"]).data.bank
    assert plain.pool_groups is None and "pool_groups" not in plain.arrays()


def test_stages_train_their_own_parts(small_data_path, tiny_base, tmp_path):
    trainer = _trainer(small_data_path, tiny_base, tmp_path, encoder_steps=2, llm_steps=1)
    before = trainer.router.network.trainable_state()
    trainer.train(stop_after=2)
    after_encoder = trainer.router.network.trainable_state()
    lora = [k for k in before if k.startswith("lora.")]
    encoder = [k for k in before if k.startswith("encoder.")]
    assert lora and encoder
    assert all(torch.equal(before[k], after_encoder[k]) for k in lora + ["gate"])
    assert any(not torch.equal(before[k], after_encoder[k]) for k in encoder)
    trainer.train()
    final = trainer.router.network.trainable_state()
    assert any(not torch.equal(after_encoder[k], final[k]) for k in lora)
    assert not torch.equal(after_encoder["gate"], final["gate"])
    # The encoder is frozen in the llm stage (train_encoder_with_llm is off).
    best = trainer.best_state if trainer.best["step"] <= 2 else after_encoder
    assert all(torch.equal(best[k], final[k]) for k in encoder)
    assert [h["stage"] for h in trainer.history] == ["initial", "encoder", "encoder", "llm"]
    # A router kept from the encoder stage (gate 0) is saved without the LLM it never used.
    saved = json.loads((tmp_path / "best" / "config.json").read_text())
    assert trainer.best["saved_without_llm"] is (trainer.best["stage"] != "llm")
    assert saved["use_llm"] is (trainer.best["stage"] == "llm")


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
    names = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert names == ["step-0000003", "step-0000004"]


def test_training_lowers_the_loss_and_moves_validation(small_data_path, tiny_base, tmp_path):
    """A real (tiny) run: the loss on the steps it trained on falls, and validation moves
    off the untrained router's figures (step 0, the per-task prior). Seconds on the CPU."""
    # Enough validation queries that a small move shows in a rank statistic (AUC).
    trainer = _trainer(small_data_path, tiny_base, tmp_path, encoder_steps=40, llm_steps=0,
                       eval_every=20, checkpoint_every=40, max_validation_queries=80)
    seen = list(range(10))

    def loss_on_seen():
        trainer.network.eval()
        with torch.no_grad():
            return np.mean([float(trainer.losses(s)["loss"]) for s in seen])

    before = loss_on_seen()
    trainer.train()
    after = loss_on_seen()
    assert after < before - 0.05, (before, after)
    initial, final = trainer.history[0], trainer.history[-1]
    assert initial["step"] == 0 and final["step"] == 40
    assert final["val_log_loss"] != initial["val_log_loss"]
    assert final["val_auc"] != initial["val_auc"]


def test_sampled_validation_evidence_reads_other_items_as_many_per_task(small_data_path,
                                                                       tiny_base, tmp_path):
    """validation_evidence 'sampled' reads each fitted model from as many bank items per task
    as the aptitude test has, none of them a core item (those were chosen on these models),
    all scored by every fitted model, the same draw for a seed; validation and the start
    read them and nothing else."""
    trainer = _trainer(small_data_path, tiny_base, tmp_path / "s", use_llm=False,
                       validation_evidence="sampled", task_label_share=1.0)
    data, items = trainer.data, trainer.validation_items
    assert TrainConfig(validation_evidence="sampled").validates_as_onboarded
    assert not set(items) & set(data.aptitude.item_ids) and len(set(items)) == len(items)
    row = {q: i for i, q in enumerate(data.bank.item_ids)}
    per_task = pd.Series([data.tasks[data.bank.tasks[row[q]]] for q in items]).value_counts()
    assert per_task.to_dict() == {t: len(ids) for t, ids in data.aptitude.items.items()}
    scored = data.bank.outcomes[:len(data.train_models), [row[q] for q in items]]
    assert not np.isnan(scored).any()
    assert items == validation_items(data, "sampled", trainer.config.seed)
    assert items != validation_items(data, "sampled", trainer.config.seed + 1)
    onboarded = _trainer(small_data_path, tiny_base, tmp_path / "a", use_llm=False,
                         validation_evidence="aptitude", task_label_share=1.0)
    assert onboarded.validation_items == sorted(data.aptitude.item_ids)
    assert abs(trainer.validate("encoder")["val_auc"]
               - onboarded.validate("encoder")["val_auc"]) > 1e-4
    with pytest.raises(ValueError, match="sampled"):
        TrainConfig(split="family", validation_evidence="sampled", validation_model_share=0.3)


def test_validation_as_onboarded_starts_at_the_aptitude_prior(small_data_path, tiny_base,
                                                             tmp_path):
    """Model and family splits validate the training models from their aptitude items alone,
    as the held-out models will be read. At step 0 (untrained) that is the aptitude prior:
    the same validation figures as the ``aptitude_prior`` router fitted with its weight.
    Validation reads a ``task_label_share`` of its queries with their label, the rest
    without."""
    from capsat.routers import Queries, make_router
    from capsat.evaluation import metrics as M

    assert TrainConfig(split="family").validates_as_onboarded
    assert not TrainConfig(split="query").validates_as_onboarded
    assert not TrainConfig(split="family", validation_evidence="bank").validates_as_onboarded
    with pytest.raises(ValueError, match="validation_evidence"):
        TrainConfig(validation_evidence="everything")
    # Every validation query with its label here: the untrained task head decides nothing.
    onboarded = _trainer(small_data_path, tiny_base, tmp_path / "a", use_llm=False,
                         validation_evidence="aptitude", task_label_share=1.0)
    banked = _trainer(small_data_path, tiny_base, tmp_path / "b", use_llm=False,
                      validation_evidence="bank", task_label_share=1.0)
    as_onboarded, as_known = onboarded.validate("encoder"), banked.validate("encoder")
    assert abs(as_onboarded["val_auc"] - as_known["val_auc"]) > 1e-3
    data = onboarded.data
    prior = make_router("aptitude_prior", prior_weight=2.0)
    prior.fit(data.table.subset(data.bank.item_ids, data.train_models), aptitude=data.aptitude)
    validation = data.validation
    probs = prior.predict_proba(Queries(validation.texts, tasks=validation.tasks,
                                        embeddings=data.validation_embeddings))
    scores = validation.scores[data.train_models].to_numpy(dtype=float)
    assert as_onboarded["val_auc"] == pytest.approx(M.auc(probs, scores), abs=1e-4)
    assert as_onboarded["val_query_auc"] == pytest.approx(M.query_auc(probs, scores), abs=1e-4)
    half = _trainer(small_data_path, tiny_base, tmp_path / "c", use_llm=False,
                    task_label_share=0.5)
    labelled = [t is not None for t in half.validation_tasks]
    assert 0 < sum(labelled) < len(labelled)
    assert [t for t in half.validation_tasks if t is not None] == [
        t for t, k in zip(validation.tasks, labelled) if k]


def test_validation_models_are_read_only_from_their_aptitude_answers(small_data_path,
                                                                    tiny_base, tmp_path):
    """With ``validation_model_share`` a model split validates on train models left out of
    fitting: not in the loss, the pool or the bank beyond their aptitude answers; onboarded as
    a user's model is, and kept in the saved router as onboarded candidates."""
    from capsat.capsat_model.router import CapsatRouter
    from capsat.routers import Queries, make_router

    with pytest.raises(ValueError, match="validation_model_share"):
        TrainConfig(split="query", validation_model_share=0.5)
    with pytest.raises(ValueError, match="validation_model_share"):
        TrainConfig(split="model", validation_model_share=1.0)
    trainer = _trainer(small_data_path, tiny_base, tmp_path, use_llm=False, split="model",
                       validation_model_share=0.5, task_label_share=1.0, start_knn_grid=[0],
                       encoder_steps=4, llm_steps=0, eval_every=2)
    data = trainer.data
    held, fitted = data.validation_models, data.train_models
    assert len(held) == 2 and len(fitted) == 2
    assert set(held) | set(fitted) == set(data.split.train_models)
    assert not set(held) & set(fitted) and not set(held) & set(data.split.test_models)
    assert list(data.validation.models) == held
    router = trainer.router
    assert router.models == fitted + held
    bank = router.bank
    assert list(bank.trained) == [True, True, False, False]
    # The pool counts the fitted models only; a validation model's evidence is its test.
    train = data.table.subset(bank.item_ids, fitted).scores.to_numpy(dtype=float)
    np.testing.assert_allclose(bank.pool_sum, np.nansum(train, axis=1))
    core = sorted(data.aptitude.item_ids)
    for j, name in enumerate(held, start=2):
        answered = np.flatnonzero(~np.isnan(bank.outcomes[j]))
        assert sorted(bank.item_ids[i] for i in answered) == core
        assert router.candidates[name].kind == "onboarded"
    rows, _, _, labels = trainer.sample(0)
    assert trainer.outcomes.shape[0] == 2
    assert labels.shape[1] == 2 + trainer.config.pseudo_models
    np.testing.assert_array_equal(labels[:, :2].numpy(),
                                  data.table.subset([bank.item_ids[r] for r in rows],
                                                    fitted).scores.to_numpy())
    # Untrained, validation is the aptitude prior of the two validation models.
    probs, scores = trainer.validation_probabilities("encoder")
    assert probs.shape == (len(data.validation), 2)
    np.testing.assert_array_equal(scores, data.validation.scores[held].to_numpy(dtype=float))
    prior = make_router("aptitude_prior", prior_weight=2.0)
    prior.fit(data.table.subset(data.bank.item_ids, fitted), aptitude=data.aptitude)
    for name, results in data.validation_results.items():
        prior.onboard(name, results)
    expected = prior.predict_proba(Queries(data.validation.texts, tasks=data.validation.tasks,
                                           embeddings=data.validation_embeddings), held)
    assert M.auc(probs, scores) == pytest.approx(M.auc(expected, scores), abs=1e-4)
    result = trainer.train()
    assert result["best"]["step"] is not None
    saved = CapsatRouter.from_pretrained(str(tmp_path / "best"))
    assert saved.models == fitted + held
    for name in held:
        assert saved.candidates[name].kind == "onboarded"
        assert len(saved.candidates[name].fitted_ability) == SMALL_MODEL.irt_dim
    assert data.summary()["validation_models"] == held


def test_the_start_is_chosen_on_validation_and_kept(small_data_path, tiny_base, tmp_path):
    """Before step 0 every (shrink, start_knn, weight) of the grids is scored on validation,
    then the weight on the query's difficulty by validation log-loss; the best is the start
    of training, recorded at step 0, saved with the router and restored on resume."""
    grids = dict(use_llm=False, encoder_steps=4, llm_steps=0, start_knn_grid=[0, 3, 8],
                 start_knn_weight_grid=[1.0, 6.0], start_prior_shrink_grid=[50.0, 0.0],
                 start_difficulty_grid=[2.0, 0.0, 1.0],
                 max_validation_queries=40, repick_difficulty_after_encoder=False,
                 pick_difficulty_before_training=True, start_min_gain_se=0.0)
    trainer = _trainer(small_data_path, tiny_base, tmp_path, **grids)
    result = trainer.train()
    start = result["start"]
    assert "difficulty_after_encoder" not in start
    tried = start["tried"]
    starts = [(0, 4.0), (3, 1.0), (3, 6.0), (8, 1.0), (8, 6.0)]  # k = 0: the config's weight
    assert [(t["start_prior_shrink"], t["start_knn"], t["start_knn_weight"]) for t in tried] == [
        (shrink, k, w) for shrink in (0.0, 50.0) for k, w in starts]
    best = max(tried, key=lambda t: t["score"])
    keys = ("start_knn", "start_knn_weight", "start_prior_shrink")
    assert {k: start[k] for k in keys} == {k: best[k] for k in keys}
    assert len({round(t["score"], 9) for t in tried}) > 1  # the start matters
    assert {round(t["score"], 9) for t in tried[:5]} != {round(t["score"], 9) for t in tried[5:]}
    # The difficulty weight: tried in order, the lowest log-loss kept; it moves calibration.
    by_loss = start["difficulty_tried"]
    assert [t["difficulty_weight"] for t in by_loss] == [0.0, 1.0, 2.0]
    beta = min(by_loss, key=lambda t: t["val_log_loss"])["difficulty_weight"]
    assert start["difficulty_weight"] == beta
    assert len({round(t["val_log_loss"], 9) for t in by_loss}) == 3
    chosen = {**{k: best[k] for k in keys}, "difficulty_weight": beta}
    assert trainer.history[0]["start"] == chosen
    saved = json.loads((tmp_path / "best" / "config.json").read_text())
    assert {k: saved[k] for k in chosen} == chosen
    again = _trainer(small_data_path, tiny_base, tmp_path, resume=True, **grids)
    again.load_checkpoint(again.latest_checkpoint())
    encoder = again.accelerator.unwrap_model(again.network).encoder
    assert again.router.config.start_knn == best["start_knn"] == encoder.start_knn
    assert (again.router.config.start_prior_shrink == best["start_prior_shrink"]
            == encoder.start_prior_shrink)
    assert again.router.config.difficulty_weight == beta == encoder.difficulty_weight


def test_the_task_head_is_fitted_before_the_start_is_chosen(small_data_path, tiny_base,
                                                           tmp_path):
    """Validation reads unlabelled queries through the task head. Fitted before the start is
    chosen, it names their tasks, so the per-task prior (start_knn 0) is scored as a trained
    router reads it, not as every task at once; off (task_head_steps 0), the head stays as
    built."""
    options = dict(use_llm=False, encoder_steps=0, llm_steps=0, start_knn_grid=[],
                   start_prior_shrink_grid=[], task_label_share=0.0, max_validation_queries=40,
                   start_difficulty_grid=[])
    scored = {}
    for steps in (0, 200):
        trainer = _trainer(small_data_path, tiny_base, tmp_path / str(steps),
                           task_head_steps=steps, **options)
        head = trainer.accelerator.unwrap_model(trainer.network).encoder.task_head
        built = {k: v.clone() for k, v in head.state_dict().items()}
        record = trainer.fit_task_head()
        changed = any(not torch.equal(built[k], v) for k, v in head.state_dict().items())
        probs, scores = trainer.validation_probabilities("encoder")
        scored[steps] = (record, changed, M.log_loss(probs, scores))
    assert scored[0][0] is None and not scored[0][1]
    record, changed, fitted_loss = scored[200]
    assert changed and 1 <= record["kept_step"] <= 200
    n_tasks = len(trainer.data.tasks)
    assert record["validation_accuracy"] > 1.5 / n_tasks
    assert record["validation_cross_entropy"] < math.log(n_tasks)  # below a uniform reading
    assert fitted_loss < scored[0][2]  # the prior, read at the right task
    result = _trainer(small_data_path, tiny_base, tmp_path / "run", task_head_steps=200,
                      **options).train()
    assert result["start"]["task_head"]["kept_step"] == record["kept_step"]


def test_a_knn_start_must_beat_the_prior_by_its_standard_errors(small_data_path, tiny_base,
                                                               tmp_path):
    """The best start reads the nearest evidence items only when its validation gain over
    the per-task prior (start_knn 0) exceeds start_min_gain_se paired bootstrap standard
    errors; else the prior is kept. The margin is recorded with its figures."""
    grids = dict(use_llm=False, encoder_steps=0, llm_steps=0, start_knn_grid=[0, 3, 8],
                 start_knn_weight_grid=[1.0], start_difficulty_grid=[0.0],
                 max_validation_queries=40, repick_difficulty_after_encoder=False,
                 start_margin_counts_selection=False)
    trainer = _trainer(small_data_path, tiny_base, tmp_path / "any", start_min_gain_se=0.0,
                       **grids)
    start = trainer.choose_start()
    tried = start["tried"]
    best = max(tried, key=lambda t: t["score"])
    prior = tried[0]
    assert prior["start_knn"] == 0 and best["start_knn"] > 0  # the data prefers a kNN start
    margin = start["margin_over_prior"]
    assert margin["gain"] == pytest.approx(best["score"] - prior["score"])
    assert margin["standard_error"] > 0 and margin["kept"]
    assert start["start_knn"] == best["start_knn"]
    # The score as a function of query weights is the selection score at weights of one, and
    # a resample's weights move it.
    trainer._apply_start(best["start_knn"], best["start_knn_weight"],
                         best["start_prior_shrink"])
    record = trainer.validate("encoder")
    probs, scores = trainer.validation_probabilities("encoder")
    statistic = trainer.selection_statistic(probs, scores)
    assert statistic(np.ones(len(probs))) == pytest.approx(trainer.selection_score(record))
    weights = np.zeros(len(probs))
    weights[:20] = 1.0
    assert statistic(weights) == pytest.approx(
        M.routed_accuracy(probs[:20], scores[:20]) + M.query_auc(probs[:20], scores[:20]))
    # A margin larger than the gain keeps the prior (counting the two kNN starts tried, the
    # default, it is larger still).
    needed = margin["gain"] / margin["standard_error"] + 0.5
    strict = _trainer(small_data_path, tiny_base, tmp_path / "strict",
                      start_min_gain_se=needed, **{**grids, "start_margin_counts_selection": True})
    start = strict.choose_start()
    assert start["start_knn"] == 0 and not start["margin_over_prior"]["kept"]
    strict_margin = start["margin_over_prior"]
    assert strict_margin["options"] == 2
    assert (strict_margin["required"] >= strict_margin["required_one_option"]
            > strict_margin["gain"])
    encoder = strict.accelerator.unwrap_model(strict.network).encoder
    assert encoder.start_knn == 0 == strict.router.config.start_knn


def test_a_knn_start_s_margin_counts_that_it_is_the_best_of_those_tried(small_data_path,
                                                                       tiny_base, tmp_path):
    """The kNN start judged is the best of the grid's, so (by default) its gain must clear the
    Phi(start_min_gain_se) quantile of the largest centred bootstrap gain over every kNN
    start tried: one option's margin for one, more for many, and a gain that clears one
    option's margin but not the grid's keeps the prior."""
    trainer = _trainer(small_data_path, tiny_base, tmp_path / "t", use_llm=False,
                       encoder_steps=0, llm_steps=0)
    rng = np.random.default_rng(0)
    n, m = 300, 3
    scores = (rng.random((n, m)) < 0.5).astype(float)
    prior = (np.tile([0.6, 0.5, 0.4], (n, 1)), scores)

    def option(right_share: float) -> tuple:
        # routes each query to a right candidate with this chance, else a wrong one
        probs = rng.random((n, m)) * 0.1
        pick = np.where(rng.random(n) < right_share, scores.argmax(1), scores.argmin(1))
        probs[np.arange(n), pick] += 1.0
        return probs, scores
    options = [option(0.53) for _ in range(10)]
    statistic = trainer.selection_statistic
    best = max(options, key=lambda o: statistic(*o)(np.ones(n)))
    one = trainer._paired_margin(best, prior, 1.0, False)
    assert "options" not in one and one["required"] == pytest.approx(one["standard_error"])
    assert trainer._paired_margin(best, prior, 1.0, False, picked_among=[best]) == one
    grid = trainer._paired_margin(best, prior, 1.0, False, picked_among=options)
    assert grid["options"] == 10 and grid["gain"] == one["gain"]
    assert grid["required_one_option"] == pytest.approx(one["required"])
    # the largest of more centred gains is larger on every resample
    fewer = trainer._paired_margin(best, prior, 1.0, False, picked_among=options[:3] + [best])
    assert one["required"] * 0.5 < fewer["required"] <= grid["required"]
    assert grid["required"] > 1.5 * one["required"]  # ten near-equal options
    # a gain between one option's margin and the grid's
    flips = [z for z in np.linspace(0.1, 3.0, 30)
             if trainer._paired_margin(best, prior, z, False)["kept"]
             and not trainer._paired_margin(best, prior, z, False, picked_among=options)["kept"]]
    assert flips, (one, grid)
    # In a model split the margin over the models too (for the option alone) must hold as well.
    models = trainer._paired_margin(best, prior, flips[0], True, picked_among=options)
    assert models["over"] == "queries and models" and not models["kept"]
    assert models["queries_only"] == trainer._paired_margin(best, prior, flips[0], False,
                                                            picked_among=options)
    # 0: any gain, grid or not
    assert trainer._paired_margin(best, prior, 0.0, False, picked_among=options)["required"] == 0


def test_a_model_split_s_start_margin_resamples_the_models_too(small_data_path, tiny_base,
                                                               tmp_path):
    """In a model split the start serves models it was not picked on, so its margin over
    the prior is a bootstrap over the validation models as well as the queries (the
    queries-only figures beside, the same as with margin_over_models off), and the
    choice follows the two-way standard error."""
    grids = dict(split="model", use_llm=False, encoder_steps=0, llm_steps=0,
                 start_knn_grid=[0, 3, 8], start_knn_weight_grid=[1.0],
                 start_difficulty_grid=[0.0], max_validation_queries=40,
                 repick_difficulty_after_encoder=False, start_min_gain_se=0.0,
                 start_margin_counts_selection=False)
    start = _trainer(small_data_path, tiny_base, tmp_path / "both", **grids).choose_start()
    margin = start["margin_over_prior"]
    best = max(start["tried"], key=lambda t: t["score"])
    prior = max((t for t in start["tried"] if t["start_knn"] == 0), key=lambda t: t["score"])
    assert best["start_knn"] > 0 and margin["kept"] and start["start_knn"] == best["start_knn"]
    assert margin["over"] == "queries and models" and margin["models"] >= 2
    assert margin["gain"] == pytest.approx(best["score"] - prior["score"])
    assert margin["gain"] == pytest.approx(margin["queries_only"]["gain"])
    assert margin["standard_error"] > margin["queries_only"]["standard_error"] > 0
    off = _trainer(small_data_path, tiny_base, tmp_path / "off", margin_over_models=False,
                   **grids).choose_start()["margin_over_prior"]
    assert "over" not in off and off == margin["queries_only"]
    # A margin that the queries alone clear but the models' spread does not keeps the prior.
    needed = (margin["gain"] / margin["standard_error"]
              + margin["gain"] / margin["queries_only"]["standard_error"]) / 2
    strict = _trainer(small_data_path, tiny_base, tmp_path / "strict",
                      **{**grids, "start_min_gain_se": needed}).choose_start()
    assert strict["start_knn"] == 0 and not strict["margin_over_prior"]["kept"]
    assert strict["margin_over_prior"]["queries_only"]["kept"]
    # start_margin_counts_selection off: the pick's own margin, not the grid's
    assert "options" not in strict["margin_over_prior"]["queries_only"]


def test_onboarded_candidates_get_a_start_picked_as_they_are_read(small_data_path, tiny_base,
                                                                   tmp_path):
    """With validation on the banks (a query split) and onboarded_start_evidence 'sampled',
    the onboarded start is picked from the grids on validation that reads every training
    model from the sampled items only (each start's score is that validation's), applied to
    the candidates a step reads from a sample, and saved with the router; a model split,
    validated as onboarded already, picks one start for all."""
    grids = dict(use_llm=False, encoder_steps=2, llm_steps=0, start_knn_grid=[0, 3],
                 start_knn_weight_grid=[2.0], start_prior_shrink_grid=[0.0],
                 onboarded_start_evidence="sampled", onboarded_start_shrink_grid=[4.0, 40.0],
                 start_difficulty_grid=[0.0], max_validation_queries=40,
                 repick_difficulty_after_encoder=False, start_min_gain_se=0.0)
    trainer = _trainer(small_data_path, tiny_base, tmp_path / "query", **grids)
    result = trainer.train()
    onboarded = result["start"]["onboarded"]
    assert onboarded["reads"] == "sampled"
    assert [(t["start_prior_shrink"], t["start_knn"]) for t in onboarded["tried"]] == [
        (4.0, 0), (4.0, 3), (40.0, 0), (40.0, 3)]
    best = max(onboarded["tried"], key=lambda t: t["score"])
    chosen = [best["start_knn"], best["start_knn_weight"], best["start_prior_shrink"]]
    assert onboarded["onboarded_start"] == chosen == trainer.router.config.onboarded_start
    sampled = validation_items(trainer.data, "sampled", trainer.config.seed)
    for t in onboarded["tried"]:
        trainer._apply_onboarded_start(t["start_knn"], t["start_knn_weight"],
                                       t["start_prior_shrink"])
        probs, scores = trainer.validation_probabilities("encoder", sampled)
        assert t["score"] == pytest.approx(trainer.selection_statistic(probs, scores)(
            np.ones(len(probs))))
    assert len({round(t["score"], 9) for t in onboarded["tried"]}) > 1
    saved = json.loads((tmp_path / "query" / "best" / "config.json").read_text())
    assert saved["onboarded_start"] == chosen
    # In a step, the candidates that read the whole pool are known; the others onboarded.
    _, pool, evidence, _ = trainer.sample(0)
    flags = evidence.onboarded.numpy()
    assert flags.any() and not flags.all()
    m = len(trainer.data.train_models)
    for j in np.flatnonzero(~flags[:m]):
        assert torch.equal(evidence.mask[j], trainer.observed[j, pool])
    model_split = _trainer(small_data_path, tiny_base, tmp_path / "model", split="model",
                           **grids).choose_start()
    assert "onboarded" not in model_split
    with pytest.raises(ValueError, match="onboarded_start_evidence"):
        TrainConfig(onboarded_start_evidence="bank")


def test_the_start_can_be_picked_on_its_own_criterion(small_data_path, tiny_base, tmp_path):
    """start_select_on scores every start of the grids by that criterion (log-loss or pooled
    AUC of the start's validation probabilities) instead of the checkpoints' routing score,
    and keeps the best by it; checkpoints are still chosen on select_on."""
    grids = dict(use_llm=False, encoder_steps=0, llm_steps=0, start_knn_grid=[0, 3, 8],
                 start_knn_weight_grid=[1.0], start_prior_shrink_grid=[0.0, 20.0],
                 start_difficulty_grid=[0.0], max_validation_queries=40,
                 repick_difficulty_after_encoder=False, start_min_gain_se=0.0)
    chosen, scored = {}, {}
    for on in ("log_loss", "auc"):
        trainer = _trainer(small_data_path, tiny_base, tmp_path / on, start_select_on=on,
                           **grids)
        start = trainer.choose_start()
        assert start["criterion"] == on
        for t in start["tried"]:
            trainer._apply_start(t["start_knn"], t["start_knn_weight"], t["start_prior_shrink"])
            probs, scores = trainer.validation_probabilities("encoder")
            expected = (-M.log_loss(probs, scores) if on == "log_loss"
                        else M.auc(probs, scores))
            assert t["score"] == pytest.approx(expected)
        best = max(start["tried"], key=lambda t: t["score"])
        chosen[on] = (best["start_knn"], best["start_prior_shrink"])
        assert (start["start_knn"], start["start_prior_shrink"]) == chosen[on]
        assert trainer.selection_score({"val_routed_accuracy": .5, "val_query_auc": .25}) == .75
        scored[on] = [round(t["score"], 9) for t in start["tried"]]
    routing = _trainer(small_data_path, tiny_base, tmp_path / "routing", **grids).choose_start()
    assert routing["criterion"] == "routing"
    assert [round(t["score"], 9) for t in routing["tried"]] not in scored.values()
    with pytest.raises(ValueError, match="start_select_on"):
        TrainConfig(start_select_on="accuracy")


def test_the_start_can_be_picked_on_loss_queries_left_out_of_the_bank(small_data_path,
                                                                      tiny_base, tmp_path):
    """With start_queries 'train' the start is picked on a seeded sample of loss queries, each
    read against the bank without its batch and their same-text twins: with k = 1 and a tiny
    weight the start is the outcome of the nearest *other* bank item (the query's own would
    make it the oracle). Each is read with its task label; model splits read the aptitude
    items alone, as validation does."""
    for split, onboarded in (("query", False), ("model", True)):
        trainer = _trainer(small_data_path, tiny_base, tmp_path / split, use_llm=False,
                           split=split, start_queries="train", start_train_queries=50,
                           start_knn_grid=[0, 1], start_knn_weight_grid=[1e-3],
                           start_difficulty_grid=[0.0], task_label_share=0.5)
        data, rows = trainer.data, trainer.start_rows
        assert len(rows) == 50 and set(rows) <= set(data.loss_rows)
        # Every start query with its label (the untrained task head decides nothing).
        np.testing.assert_array_equal(trainer.start_tasks.numpy(), data.bank.tasks[rows])
        start = trainer.choose_start()
        assert start["selected_on"].startswith("train")
        assert [t["start_knn"] for t in start["tried"]] == [0, 1]
        trainer._apply_start(1, 1e-3, 0.0)
        probs, scores = trainer.start_probabilities()
        raw = data.bank.outcomes[:len(data.train_models)]
        outcomes = np.nan_to_num(raw, nan=0.0)
        np.testing.assert_array_equal(scores, outcomes[:, rows].T)
        readable = ~np.isnan(raw)  # (M, N): each model reads the items it has a score on
        if onboarded:
            readable &= np.isin(data.bank.item_ids, sorted(data.aptitude.item_ids))[None]
        similarity = data.bank.embeddings[rows] @ data.bank.embeddings.T
        # A batch of queries is left out together (one evidence pool for the batch).
        batch = np.arange(len(rows)) // START_BATCH
        own = np.stack([np.isin(data.text_groups, data.text_groups[rows[batch == b]])
                        for b in batch])
        for m in range(len(data.train_models)):
            nearest = np.where(own | ~readable[m][None], -np.inf, similarity).argmax(axis=1)
            np.testing.assert_array_equal(probs[:, m] > 0.5, outcomes[m, nearest] > 0.5)
        assert (probs > 0.5).mean() not in (0.0, 1.0)
        # Reading its own item would have been the oracle on every query.
        assert (probs > 0.5).astype(float).tolist() != scores.tolist()
    with pytest.raises(ValueError, match="start_queries"):
        TrainConfig(start_queries="test")


def test_the_difficulty_weight_is_picked_again_on_the_trained_router(small_data_path,
                                                                     tiny_base, tmp_path):
    """At the encoder stage's end the weight is picked again from the grid, on the validation
    log-loss of the router kept so far; the choice is applied, logged, saved with the router
    and restored on resume."""
    grids = dict(use_llm=False, encoder_steps=6, llm_steps=0, eval_every=2, start_knn_grid=[0],
                 start_difficulty_grid=[2.0, 0.0, 1.0], max_validation_queries=40,
                 pick_difficulty_before_training=True)
    trainer = _trainer(small_data_path, tiny_base, tmp_path, **grids)
    result = trainer.train()
    start = result["start"]
    choice = start["difficulty_after_encoder"]
    before = min(start["difficulty_tried"], key=lambda t: t["val_log_loss"])
    assert choice["trained_with"] == before["difficulty_weight"]
    assert [t["difficulty_weight"] for t in choice["tried"]] == [0.0, 1.0, 2.0]
    beta = min(choice["tried"], key=lambda t: t["val_log_loss"])["difficulty_weight"]
    assert choice["difficulty_weight"] == beta == start["difficulty_weight"]
    # The log-loss is the kept router's (its best state), not the last step's.
    network = trainer.accelerator.unwrap_model(trainer.network)
    network.load_trainable_state(trainer.best_state)
    for tried in choice["tried"]:
        trainer._apply_difficulty_weight(tried["difficulty_weight"])
        assert trainer.validate("encoder")["val_log_loss"] == pytest.approx(
            tried["val_log_loss"], rel=1e-9)
    assert len({round(t["val_log_loss"], 9) for t in choice["tried"]}) == 3
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("difficulty_after_encoder")] == [6]
    saved = Router.load(tmp_path / "best")
    assert saved.config.difficulty_weight == beta
    again = _trainer(small_data_path, tiny_base, tmp_path, resume=True, **grids)
    again.load_checkpoint(again.latest_checkpoint())
    assert again.accelerator.unwrap_model(again.network).encoder.difficulty_weight == beta
    assert again.start["difficulty_after_encoder"] == choice


def test_the_encoder_can_train_without_the_difficulty_s_start_and_pick_it_after(
        small_data_path, tiny_base, tmp_path):
    """With pick_difficulty_before_training off (the default), the encoder trains with the
    model config's weight (here 0: the difficulty as an input only); no grid is tried before
    step 0, and the re-pick after the encoder stage alone chooses the weight the router is
    saved with."""
    trainer = _trainer(small_data_path, tiny_base, tmp_path, use_llm=False, encoder_steps=4,
                       llm_steps=0, eval_every=2, start_knn_grid=[0], difficulty_weight=0.0,
                       start_difficulty_grid=[2.0, 0.0, 1.0], max_validation_queries=40,
                       pick_difficulty_before_training=False)
    result = trainer.train()
    start = result["start"]
    assert "difficulty_tried" not in start
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[0]["start"]["difficulty_weight"] == 0.0
    choice = start["difficulty_after_encoder"]
    assert choice["trained_with"] == 0.0
    beta = min(choice["tried"], key=lambda t: t["val_log_loss"])["difficulty_weight"]
    assert [t["difficulty_weight"] for t in choice["tried"]] == [0.0, 1.0, 2.0]
    assert Router.load(tmp_path / "best").config.difficulty_weight == beta


def test_the_difficulty_weights_can_be_picked_on_loss_queries_left_out_of_the_bank(
        small_data_path, tiny_base, tmp_path):
    """With difficulty_queries 'train' the re-pick reads the start's loss queries out of the
    bank (start_queries may stay on validation): each weight's log-loss is that reading's, the
    onboarded candidates' weight reads the training models from the sampled items there, and
    the weights picked are saved. A kept router that is a trained step was fitted on those
    queries, so its weights are picked on validation."""
    grids = dict(use_llm=False, encoder_steps=4, llm_steps=0, eval_every=2, start_knn_grid=[0],
                 onboarded_start_evidence="sampled", onboarded_start_shrink_grid=[4.0],
                 start_difficulty_grid=[2.0, 0.0, 1.0], max_validation_queries=40,
                 difficulty_weight=0.0, difficulty_queries="train", start_train_queries=60,
                 checkpoint_min_gain_se=1e9)  # step 0 is kept
    trainer = _trainer(small_data_path, tiny_base, tmp_path, **grids)
    assert len(trainer.start_rows) == 60 and trainer.config.start_queries == "validation"
    readings, read = [], trainer.start_logits
    trainer.start_logits = lambda *a: readings.append(a) or read(*a)
    start = trainer.train()["start"]
    # One reading at step 0 (timed for max_minutes), one per weight set, not one per weight.
    assert len(readings) == 3
    del trainer.start_logits
    assert trainer.best["step"] == 0 and "start_train" in trainer.timing
    choice = start["difficulty_after_encoder"]
    assert choice["picked_on"].startswith("train (60 loss queries")
    assert [t["difficulty_weight"] for t in choice["tried"]] == [0.0, 1.0, 2.0]
    network = trainer.accelerator.unwrap_model(trainer.network)
    network.load_trainable_state(trainer.best_state)
    # Read once and shifted by the weight: each weight's log-loss is that of a reading at it.
    for tried in choice["tried"]:
        trainer._apply_difficulty_weight(tried["difficulty_weight"])
        probs, scores = trainer.start_probabilities()
        assert M.log_loss(probs, scores) == pytest.approx(tried["train_log_loss"], rel=1e-5)
    assert len({round(t["train_log_loss"], 9) for t in choice["tried"]}) == 3
    beta = min(choice["tried"], key=lambda t: t["train_log_loss"])["difficulty_weight"]
    trainer._apply_difficulty_weight(beta)
    picked = choice["onboarded"]
    assert picked["picked_on"] == choice["picked_on"]
    sampled = validation_items(trainer.data, "sampled", trainer.config.seed)
    for tried in picked["tried"]:
        trainer._apply_onboarded_difficulty_weight(tried["difficulty_weight"])
        probs, scores = trainer.start_probabilities(sampled)
        assert M.log_loss(probs, scores) == pytest.approx(tried["train_log_loss"], rel=1e-5)
    onboarded_beta = min(picked["tried"], key=lambda t: t["train_log_loss"])["difficulty_weight"]
    saved = json.loads((tmp_path / "best" / "config.json").read_text())
    assert (saved["difficulty_weight"], saved["onboarded_difficulty_weight"]) == (
        beta, onboarded_beta)
    # The kept router a trained step: validation picks.
    trainer.best["step"] = 4
    tried, _, picked_on = trainer._try_difficulty_weights()
    assert picked_on.startswith("validation (the kept router, step 4")
    assert all("val_log_loss" in t for t in tried)
    with pytest.raises(ValueError, match="difficulty_queries"):
        TrainConfig(difficulty_queries="test")


def test_best_router_is_saved_and_loads(small_data_path, tiny_base, tmp_path, mmlu_small):
    trainer = _trainer(small_data_path, tiny_base, tmp_path, llm_min_gain_queries=0)
    result = trainer.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4]
    validated = {r["step"]: r["selection_score"] for r in log if "selection_score" in r}
    assert set(validated) == {0, 2, 4}
    # The kept router is the best on validation among the validated steps.
    assert result["best"]["step"] == max(validated, key=lambda s: (validated[s], -s))
    router = Router.load(tmp_path / "best")
    probs = router.predict_proba(mmlu_small.texts[:3])
    assert probs.shape == (3, len(mmlu_small.models))
    seen = set(router.fitted_on.query_ids)
    assert set(trainer.data.bank.item_ids) | set(trainer.data.aptitude.item_ids) <= seen
    assert set(trainer.data.validation.query_ids) <= seen
    assert not seen & set(trainer.data.split.test)
    card = (tmp_path / "best" / "README.md").read_text()
    assert "## Evaluation" in card and f"step {result['best']['step']}" in card


def _routed_to_one(n: int, m: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Validation scores where every query has a right and a wrong candidate (0 or 1), and
    probabilities that route every query to candidate 2."""
    rng = np.random.default_rng(0)
    scores = (rng.random((n, m)) < 0.5).astype(float)
    scores[:, 0] = 1.0 - scores[:, 1]
    base = np.full((n, m), 0.5)
    base[:, 2] = 0.6
    return scores, base


def test_a_step_must_beat_the_kept_router_by_its_standard_errors(small_data_path, tiny_base,
                                                                 tmp_path, monkeypatch):
    """With checkpoint_min_gain_se a validated step replaces the kept router only when its
    selection score is higher by that many paired bootstrap standard errors over the
    validation queries; the margin is logged, and survives a checkpoint."""
    # A gain on one query of n is about one standard error of itself: two are required.
    trainer = _trainer(small_data_path, tiny_base, tmp_path, checkpoint_min_gain_se=2.0,
                       use_llm=False, llm_steps=0)
    n = 40
    scores, base = _routed_to_one(n)
    lucky = base.copy()
    lucky[0] = 0.3 + 0.4 * scores[0]  # right on one query more: a gain within the noise
    sure = 0.2 + 0.6 * scores  # right everywhere: a gain far beyond it
    trainer.start = trainer.choose_start()  # a checkpoint records it (the run's step 0 does)
    validations = iter([base, lucky, sure])
    monkeypatch.setattr(trainer, "validation_probabilities",
                        lambda stage: (next(validations), scores))
    kept, records = [], []
    for step in range(3):
        trainer.step = step
        records.append({"step": step, "stage": "encoder"})
        trainer._validate_and_keep_best(records[-1], "encoder")
        kept.append(trainer.best["step"])
    assert kept == [0, 0, 2]
    assert "margin_over_kept" not in records[0]  # nothing kept yet: step 0 is kept
    lucky_margin, sure_margin = records[1]["margin_over_kept"], records[2]["margin_over_kept"]
    # One query's worth of gain over the kept router, not two standard errors of it.
    statistic = trainer.selection_statistic
    gain = statistic(lucky, scores)(np.ones(n)) - statistic(base, scores)(np.ones(n))
    assert gain > 0 and lucky_margin["gain"] == pytest.approx(gain)
    assert records[1]["selection_score"] > records[0]["selection_score"]
    assert 0 < lucky_margin["gain"] <= lucky_margin["required"] and not lucky_margin["kept"]
    assert sure_margin["gain"] > sure_margin["required"] > 0 and sure_margin["kept"]
    np.testing.assert_array_equal(trainer.best_validation[0], sure)
    # Kept probabilities travel with the checkpoint (a resumed run compares with them).
    trainer.save_checkpoint()
    again = _trainer(small_data_path, tiny_base, tmp_path, checkpoint_min_gain_se=2.0,
                     use_llm=False, llm_steps=0)
    again.load_checkpoint(again.latest_checkpoint())
    np.testing.assert_array_equal(again.best_validation[0], sure)
    np.testing.assert_array_equal(again.best_validation[1], scores)
    with pytest.raises(ValueError, match="checkpoint_min_gain_se"):
        TrainConfig(checkpoint_min_gain_se=-1)


def test_a_step_s_margin_counts_every_step_validated_since_the_kept_one(small_data_path,
                                                                       tiny_base, tmp_path,
                                                                       monkeypatch):
    """By default a step is one of every step validated since the kept router was set, so its
    gain must clear the largest centred bootstrap gain among them: a gain that one step's
    margin keeps is not kept after four unkept looks, and the looks survive a checkpoint
    (and reset when a step is kept)."""
    scores, base = _routed_to_one(120)

    def rerouted(queries, right: bool) -> np.ndarray:
        probs = base.copy()
        for q in queries:  # to a right (or wrong) one of candidates 0 and 1
            probs[q, :2] = 0.3
            probs[q, int(scores[q, 1] == right)] = 0.9
        return probs
    wrong_at_base, right_at_base = np.flatnonzero(scores[:, 2] == 0), np.flatnonzero(scores[:, 2])
    # four steps that lose six queries each (never kept), then one that gains two
    looks = [rerouted(right_at_base[i:i + 6], False) for i in (0, 6, 12, 18)]
    looks.append(rerouted(wrong_at_base[:2], True))

    def run(out, counts: bool) -> tuple[list, list, CapsatTrainer]:
        trainer = _trainer(small_data_path, tiny_base, out, checkpoint_min_gain_se=1.0,
                           checkpoint_margin_counts_selection=counts, use_llm=False,
                           llm_steps=0)
        trainer.start = trainer.choose_start()
        validations = iter([base] + looks + [0.2 + 0.6 * scores])  # the last: right everywhere
        monkeypatch.setattr(trainer, "validation_probabilities",
                            lambda stage: (next(validations), scores))
        kept, records = [], []
        for step in range(len(looks) + 1):
            trainer.step = step
            records.append({"step": step, "stage": "encoder"})
            trainer._validate_and_keep_best(records[-1], "encoder")
            kept.append(trainer.best["step"])
        return kept, records, trainer
    kept, records, _ = run(tmp_path / "one", False)
    counted_kept, counted, trainer = run(tmp_path / "counted", True)
    assert kept == [0, 0, 0, 0, 0, 5] and counted_kept == [0] * 6
    assert "options" not in records[-1]["margin_over_kept"]
    assert [r["margin_over_kept"].get("options", 1) for r in counted[1:]] == [1, 2, 3, 4, 5]
    for plain, count in zip(records[1:], counted[1:]):
        assert count["margin_over_kept"]["gain"] == plain["margin_over_kept"]["gain"]
        assert count["margin_over_kept"]["required"] >= plain["margin_over_kept"]["required"]
    last = counted[-1]["margin_over_kept"]
    assert last["required_one_option"] < last["gain"] < last["required"]
    # the looks travel with a checkpoint
    assert len(trainer.looks) == 5
    trainer.save_checkpoint()
    again = _trainer(small_data_path, tiny_base, tmp_path / "counted", use_llm=False,
                     llm_steps=0, checkpoint_min_gain_se=1.0)
    again.load_checkpoint(again.latest_checkpoint())
    assert len(again.looks) == 5
    for (p0, s0), (p1, s1) in zip(trainer.looks, again.looks):
        np.testing.assert_array_equal(p0, p1)
        np.testing.assert_array_equal(s0, s1)
    # a step kept starts the count anew
    trainer.step = 6
    trainer._validate_and_keep_best({"step": 6, "stage": "encoder"}, "encoder")
    assert trainer.best["step"] == 6 and trainer.looks == []


def test_a_model_split_s_step_margin_resamples_the_models_too(small_data_path, tiny_base,
                                                              tmp_path, monkeypatch):
    """In a model split a kept step serves new models, so its margin over the kept router
    resamples the validation models too: a step whose whole gain is routing to one of three
    candidates clears the queries-only margin but not the two-way one, and stays unkept
    (kept with margin_over_models off)."""
    n, m = 60, 3
    rng = np.random.default_rng(1)
    scores = (rng.random((n, m)) < 0.5).astype(float)
    scores[:, 1] = 1.0 - scores[:, 0]
    base = np.full((n, m), 0.5)
    base[:, 2] = 0.6  # routes every query to candidate 2
    carried = base.copy()
    carried[:, 0] = np.where(scores[:, 0] == 1, 0.7, 0.4)  # to candidate 0 where it is right
    reference = _trainer(small_data_path, tiny_base, tmp_path / "reference", split="model",
                         use_llm=False, llm_steps=0)
    both = reference._paired_margin((carried, scores), (base, scores), 1.0, True)
    queries_se = both["queries_only"]["standard_error"]
    assert both["standard_error"] > queries_se > 0
    between = (both["gain"] / both["standard_error"] + both["gain"] / queries_se) / 2
    kept_steps = {}
    for over in (True, False):
        trainer = _trainer(small_data_path, tiny_base, tmp_path / str(over), split="model",
                           checkpoint_min_gain_se=between, margin_over_models=over,
                           use_llm=False, llm_steps=0)
        trainer.start = trainer.choose_start()
        validations = iter([base, carried])
        monkeypatch.setattr(trainer, "validation_probabilities",
                            lambda stage: (next(validations), scores))
        records = []
        for step in range(2):
            trainer.step = step
            records.append({"step": step, "stage": "encoder"})
            trainer._validate_and_keep_best(records[-1], "encoder")
        kept_steps[over] = trainer.best["step"]
        margin = records[1]["margin_over_kept"]
        assert margin["gain"] == pytest.approx(both["gain"])
        assert ("over" in margin) == over
    assert kept_steps == {True: 0, False: 1}


def test_the_llm_stage_must_beat_the_encoder_s_router_by_a_margin(small_data_path, tiny_base,
                                                                  tmp_path, monkeypatch):
    """An llm-stage router replaces one kept from the encoder stage only when its selection
    score is higher by llm_min_gain_queries / (validation queries); between llm-stage
    routers any gain counts."""
    trainer = _trainer(small_data_path, tiny_base, tmp_path, llm_steps=4,
                       llm_min_gain_queries=1e6)
    result = trainer.train()
    log = [r for r in trainer.history if "selection_score" in r]
    encoder = [r for r in log if r["stage"] != "llm"]
    assert len(log) > len(encoder)  # the llm stage was validated, and lost
    assert result["best"]["stage"] == "encoder"
    assert result["best"]["step"] == max(encoder, key=lambda r: r["selection_score"])["step"]
    assert not (tmp_path / "best" / "adapter").exists() and result["best"]["saved_without_llm"]
    # The rule, record by record: validation figures set by hand (routed accuracy + query
    # AUC), one validation query's worth of margin.
    trainer = _trainer(small_data_path, tiny_base, tmp_path / "rule", llm_min_gain_queries=1)
    n = len(trainer.data.validation)
    figures = iter([0.5, 0.5 + 0.5 / n, 0.5 + 2 / n, 0.5 + 2.1 / n])
    monkeypatch.setattr(trainer, "validate", lambda stage: {
        "val_routed_accuracy": next(figures), "val_query_auc": 0.5})
    kept = []
    for step, stage in enumerate(["encoder", "llm", "llm", "llm"]):
        trainer.step = step
        trainer._validate_and_keep_best({"step": step, "stage": stage}, stage)
        kept.append(trainer.best["step"])
    assert kept == [0, 0, 2, 3]


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
    """The run ends within max_minutes: it stops early enough to validate, checkpoint, save
    and re-pick the difficulty weight after the last step inside the limit (not after it)."""
    limit = 6.0
    # No start grid: its validations come before the first step, whatever the limit.
    trainer = _trainer(small_data_path, tiny_base, tmp_path, encoder_steps=5000, llm_steps=0,
                       eval_every=20, checkpoint_every=20, max_validation_queries=60,
                       max_minutes=limit / 60, start_knn_grid=[])
    started = time.perf_counter()
    result = trainer.train()
    elapsed = time.perf_counter() - started
    assert not result["completed"] and result["step"] >= 1
    assert elapsed <= limit, elapsed
    assert "val_auc" in trainer.history[-1]
    # ... the difficulty weight's re-pick (a validation per weight) included
    assert len(trainer.history[-1]["difficulty_after_encoder"]["tried"]) == 5
    assert trainer.latest_checkpoint().name == f"step-{result['step']:07d}"


def test_the_time_limit_budgets_the_re_pick_s_readings_of_the_loss_queries(
        small_data_path, tiny_base, tmp_path):
    """With difficulty_queries 'train' the re-pick after the last encoder step reads the loss
    queries: the time limit reserves that reading (timed at step 0), not only validations."""
    trainer = _trainer(small_data_path, tiny_base, tmp_path, use_llm=False, llm_steps=0,
                       max_minutes=1.0, difficulty_queries="train", start_train_queries=20,
                       start_knn_grid=[0], start_difficulty_grid=[0.0, 1.0, 2.0])
    trainer.start = trainer.choose_start()
    assert "start_train" in trainer.timing and "train_log_loss" in trainer.start
    trainer.timing.update(step_max_encoder=0.01, validation_encoder=0.01, checkpoint=0.01,
                          save_best=0.01)
    trainer.timing["start_train"] = 1.0  # a reading fits a minute
    assert not trainer._out_of_time(time.perf_counter(), "encoder")
    trainer.timing["start_train"] = 45.0  # with the safety factor it does not
    assert trainer._out_of_time(time.perf_counter(), "encoder")


def test_no_progress_silences_the_training_bars(small_data_path, tiny_base, tmp_path, capfd):
    """`capsat train --no-progress` (progress: false) draws no bar, the validation's scoring
    bar included; the default draws the training bar."""
    _trainer(small_data_path, tiny_base, tmp_path / "quiet", progress=False,
             max_validation_queries=80).train()
    quiet = capfd.readouterr().err
    assert "training CapSAT" not in quiet and "capsat: scoring" not in quiet
    _trainer(small_data_path, tiny_base, tmp_path / "loud").train()
    assert "training CapSAT" in capfd.readouterr().err


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
    # The adapter is saved only with a router kept from the LLM stage (else its gate was 0).
    adapter = tmp_path / "ddp" / "best" / "adapter" / "adapter_model.safetensors"
    assert adapter.exists() is (summary["best"]["stage"] == "llm")
    assert summary["best"]["saved_without_llm"] is (summary["best"]["stage"] != "llm")

    steps = dict(encoder_steps=4, llm_steps=4)
    model, whole_cfg = recipe(small_data_path, tiny_base, tmp_path / "whole", **steps)
    subprocess.run([sys.executable, "-m", "train", *cli_args(model, whole_cfg)], env=env,
                   check=True, capture_output=True, timeout=600, cwd=REPO)
    model, cut_cfg = recipe(small_data_path, tiny_base, tmp_path / "cut", **steps)
    proc = subprocess.Popen([sys.executable, "-m", "train", *cli_args(model, cut_cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    checkpoint = tmp_path / "cut" / "checkpoints" / "step-0000005"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists()
    done = sorted((tmp_path / "cut" / "checkpoints").glob("step-*"))
    assert done[-1].name < "step-0000008", "the run finished before it could be killed"
    subprocess.run([sys.executable, "-m", "train", *cli_args(model, cut_cfg), "--resume",
                    "true"], env=env, check=True, capture_output=True, timeout=600, cwd=REPO)
    final = "checkpoints/step-0000008/trainable.safetensors"
    a = load_file(str(tmp_path / "whole" / final))
    b = load_file(str(tmp_path / "cut" / final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_onboarded_candidates_get_a_difficulty_weight_picked_as_they_are_read(
        small_data_path, tiny_base, tmp_path):
    """Where onboarded candidates get a start of their own (validation on the banks), the
    re-pick after the encoder stage also picks their difficulty weight, on the log-loss of
    validation that reads every training model from the sampled items (each weight's
    log-loss is that validation's); it is saved with the router and restored on resume. A
    model split, validated as onboarded already, picks one weight for all."""
    grids = dict(use_llm=False, encoder_steps=4, llm_steps=0, eval_every=2, start_knn_grid=[0],
                 onboarded_start_evidence="sampled", onboarded_start_shrink_grid=[4.0],
                 start_difficulty_grid=[2.0, 0.0, 1.0], max_validation_queries=40,
                 difficulty_weight=0.0)
    trainer = _trainer(small_data_path, tiny_base, tmp_path / "query", **grids)
    start = trainer.train()["start"]
    picked = start["difficulty_after_encoder"]["onboarded"]
    assert picked["reads"] == "sampled"
    assert [t["difficulty_weight"] for t in picked["tried"]] == [0.0, 1.0, 2.0]
    beta = min(picked["tried"], key=lambda t: t["val_log_loss"])["difficulty_weight"]
    assert picked["onboarded_difficulty_weight"] == beta == start["onboarded_difficulty_weight"]
    network = trainer.accelerator.unwrap_model(trainer.network)
    network.load_trainable_state(trainer.best_state)
    sampled = validation_items(trainer.data, "sampled", trainer.config.seed)
    for tried in picked["tried"]:
        trainer._apply_onboarded_difficulty_weight(tried["difficulty_weight"])
        probs, scores = trainer.validation_probabilities("encoder", sampled)
        assert M.log_loss(probs, scores) == pytest.approx(tried["val_log_loss"], rel=1e-9)
    assert len({round(t["val_log_loss"], 9) for t in picked["tried"]}) == 3
    saved = json.loads((tmp_path / "query" / "best" / "config.json").read_text())
    assert saved["onboarded_difficulty_weight"] == beta
    again = _trainer(small_data_path, tiny_base, tmp_path / "query", resume=True, **grids)
    again.load_checkpoint(again.latest_checkpoint())
    encoder = again.accelerator.unwrap_model(again.network).encoder
    assert encoder.onboarded_difficulty_weight == beta
    model_split = _trainer(small_data_path, tiny_base, tmp_path / "model", split="model",
                           **grids)
    assert model_split.pick_onboarded_difficulty_weight() is None
