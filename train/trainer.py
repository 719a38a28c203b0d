"""CapsatTrainer: trains a CapSAT router with accelerate, from one CPU process to many GPUs.

Two stages:

1. **encoder** (``encoder_steps``): the capability encoder alone, on the sentence embeddings
   (no LLM forward, so thousands of cheap steps). Every step draws ``queries_per_step`` loss
   queries and one pool of evidence items: the loss queries' nearest bank items plus a random
   ``evidence_max``, never a loss query itself. Each candidate reads either the whole pool
   (``bank_share`` of them: a known model's bank) or a random 20..500 of it (a new model's
   aptitude answers); ``pseudo_models`` extra candidates mix two training models task by task.
   So identities cannot be memorised: a candidate is only ever its evidence. With the model's
   ``difficulty_ridge``, each candidate's ridge fit of the query's difficulty is refitted
   over the bank without the step's loss queries.
2. **llm** (``llm_steps``): the LLM reads the candidates' soft tokens for
   ``llm_queries_per_step`` loss queries per step, in one packed pass each; LoRA, connector
   and gate train (the encoder too with ``train_encoder_with_llm``), starting from the best
   encoder of stage 1 (the gate starts at 0, so that is where stage 2 starts).

Losses on every (query, candidate) pair: pointwise cross-entropy (scores as soft targets:
calibration), listwise (per query, softmax over the candidates toward the ones that got it
right: the comparison routing makes), IRT (sigmoid(a_q . theta_m - b_q)), and the task head's
cross-entropy.

Before step 0, the task head is fitted alone on the loss queries' labels
(``task_head_steps``, early-stopped on the validation queries'), since validation reads a
share of its queries without their label, through it. Then the direct logit's start (a kNN
over the evidence shrunk toward the per-task prior, or the prior alone) is picked from
``start_knn_grid`` x ``start_knn_weight_grid`` (x ``start_prior_shrink_grid``: how far the
prior's per-task accuracy shrinks) by ``start_select_on`` (``select_on`` unless set), on
validation or (``start_queries: train``) on loss queries each read against the bank without
itself; a kNN start must beat the prior by ``start_min_gain_se`` paired bootstrap standard
errors over those queries (with ``start_margin_counts_selection``, the Phi quantile of the
largest centred gain of every kNN start tried, since the best of them is picked). With
validation on the banks and ``onboarded_start_evidence``, the start of candidates read from a
few items (onboarded models; in steps, those reading a sample) is picked the same way, with
``onboarded_start_shrink_grid``, on validation reading the training models from sampled (or
core) items. The start's weight on the query's
difficulty is picked from ``start_difficulty_grid`` on validation log-loss at the encoder
stage's end, on the kept router (``repick_difficulty_after_encoder``; the encoder trains with
the model config's weight, 0 by default), and before step 0 too with
``pick_difficulty_before_training``; onboarded candidates get theirs on the onboarded
validation (``onboarded_difficulty_weight``). With ``difficulty_queries: train`` both weights
are picked on the loss queries read out of the bank instead, as the start can be (a trained
kept router, fitted on them, falls back to validation).
Validation (step 0, every ``eval_every`` / ``llm_eval_every`` steps and at each stage's end)
scores the validation queries, a ``task_label_share`` of them with their task label, against
every training model's whole bank (its aptitude items alone in model and family splits:
``validation_evidence``); the router kept is the best by ``select_on`` (routed accuracy +
query AUC by default; one of the llm stage must beat the encoder stage's by
``llm_min_gain_queries`` validation queries; with ``checkpoint_min_gain_se`` any step must
beat the kept router by that many paired bootstrap standard errors over the validation
queries, so a start that routes like the per-task best model is not traded for noise); one
kept from the encoder stage (gate 0) is saved without the LLM, which adds nothing. Steps
draw their samples from a generator seeded by (seed, step, process), so a run resumed from
a checkpoint equals an uninterrupted one.
Checkpoints are safetensors + JSON folders written atomically.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from capsat.capsat_model.config import CapsatConfig
from capsat.capsat_model.evidence import Evidence, RidgeDifficulty
from capsat.capsat_model.router import CapsatRouter
from capsat.evaluation import metrics as M
from capsat.evaluation.compare import (WeightedPooledAuc, paired_two_way_bootstrap,
                                       paired_weighted_bootstrap)
from capsat.routers.base import Queries
from capsat.routers.provenance import Provenance
from data_builders.atomic import atomic_folder
from data_builders.splits import MODEL_SPLITS

from .config import TrainConfig
from .data import TrainingData, validation_items

CHECKPOINTS = "checkpoints"
BEST = "best"
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "trainable.safetensors"
BEST_WEIGHTS_FILE = "best_trainable.safetensors"
#: the kept router's validation probabilities and scores (``checkpoint_min_gain_se``)
BEST_VALIDATION_FILE = "best_validation.safetensors"
#: ... and those of the steps validated since (``checkpoint_margin_counts_selection``)
LOOKS_FILE = "looks_since_kept.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
KEEP_CHECKPOINTS = 2
#: the time limit reserves this multiple of the slowest step plus the final validation and saves
TIME_SAFETY_FACTOR = 1.5
#: ... and at least this many seconds more (a pause of the machine outlasts tiny timings)
TIME_SAFETY_SECONDS = 1.0
#: Bootstrap resamples of the queries behind the start's margin over the prior and a step's
#: margin over the kept router.
START_BOOTSTRAP_SAMPLES = 500
#: Loss queries read together when the start is picked on them: each batch against the bank
#: without its own queries (a test query is never in the bank).
START_BATCH = 64
#: Learning rate of ``fit_task_head`` (a linear head on unit-length embeddings, full batch).
TASK_HEAD_LR = 0.003
EPS = 1e-12
GROUPS = ("encoder", "llm_heads", "lora")


def validation_card(record: dict) -> str:
    """The model card's evaluation table: the validation figures of the kept step."""
    rows = [(key[len("val_"):], value) for key, value in record.items()
            if key.startswith("val_")]
    lines = [f"Validation part of the training run (step {record['step']}, {record['stage']} "
             f"stage; chosen there):", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in rows]
    return "\n".join(lines)


def make_accelerator(cpu: bool = False) -> Accelerator:
    """The stages train different parameter groups (the LLM's adapter and gate sit idle in the
    encoder stage), so DDP must look for parameters a step did not use."""
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(cpu=cpu, kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=True)])


class CapsatTrainer:
    def __init__(self, model_config: CapsatConfig, config: TrainConfig, data: TrainingData, *,
                 llm=None, tokenizer=None, accelerator: Accelerator | None = None):
        self.config = config
        self.data = data
        self.accelerator = accelerator or make_accelerator()
        set_seed(config.seed)
        models = data.train_models
        self.router = CapsatRouter.create(
            model_config, data.bank, models, data.tasks,
            prices={m: data.prices[m] for m in models}, aptitude=data.aptitude,
            aptitude_items=data.aptitude_items, llm=llm, tokenizer=tokenizer)
        # Validation models join as a user's new model does, from their aptitude answers.
        for name, results in data.validation_results.items():
            self.router.onboard(name, results, price=data.prices[name])
        bank_table = data.table.subset(data.bank.item_ids, models)
        seen = data.table.subset(list(np.array(data.bank.item_ids)[data.loss_rows]), models)
        core = data.table.subset(sorted(data.aptitude.item_ids), models)
        self.router.fitted_on = Provenance.from_tables(
            seen, data.validation, core, split=config.split, seed=config.seed,
            parts=["train", "validation", "aptitude items"])
        # The evidence bank is the train part; the reference accuracies are its.
        self.router.fitted_on.query_ids = sorted(set(self.router.fitted_on.query_ids)
                                                 | set(data.bank.item_ids))
        self.router.fitted_on.model_accuracy = {m: float(v) for m, v in
                                                bank_table.scores.mean().items()}
        self.output_dir = Path(config.output_dir)
        network = self.router.network
        groups = network.trainable_groups()
        self.optimizer = torch.optim.AdamW(
            [{"params": groups[name], "lr": 0.0} for name in GROUPS],
            weight_decay=config.weight_decay)
        self.network, self.optimizer = self.accelerator.prepare(network, self.optimizer)
        self.device = self.accelerator.device
        bank, fitted = data.bank, np.arange(len(models))  # the bank's training rows
        self.outcomes = torch.from_numpy(np.nan_to_num(bank.outcomes[fitted], nan=0.0)).float()
        self.observed = torch.from_numpy(~np.isnan(bank.outcomes[fitted]))
        pool_loo = bank.pool_success(fitted)
        self.pool_loo = torch.from_numpy(pool_loo).float()
        #: The baseline of the query's difficulty: the pool's success per task over the
        #: whole bank, each training model left out (as the router reads its bank).
        self.task_success = torch.from_numpy(bank.task_means(pool_loo, len(data.tasks))).float()
        #: The whole training pool's success (1, N) and per task (1, T), no model left out:
        #: the query's difficulty shared by every candidate (the model's shared_difficulty).
        whole = bank.pool_success_without([])[None]
        self.pool_whole = torch.from_numpy(whole).float()
        self.task_whole = torch.from_numpy(bank.task_means(whole, len(data.tasks))).float()
        self.embeddings = torch.from_numpy(bank.embeddings.astype(np.float32))
        self.item_tasks = torch.from_numpy(bank.tasks.astype(np.int64))
        #: With the model's ``difficulty_ridge``: the ridge fits of the query's difficulty,
        #: refitted each step without its loss queries (and any item no training model scored).
        self.ridge = (RidgeDifficulty(self.embeddings, self.item_tasks,
                                      model_config.difficulty_ridge)
                      if model_config.difficulty_ridge else None)
        self.unscored = np.flatnonzero(bank.pool_count == 0)
        self.step = 0
        self.best = {"score": -math.inf, "step": None}
        self.best_state: dict[str, torch.Tensor] | None = None
        #: (probabilities, scores) of the last validation and of the kept router's: the
        #: paired margin of ``checkpoint_min_gain_se`` (main process).
        self.last_validation: tuple[np.ndarray, np.ndarray] | None = None
        self.best_validation: tuple[np.ndarray, np.ndarray] | None = None
        #: ... and of every step validated since the kept router was set, which a step's margin
        #: counts with ``checkpoint_margin_counts_selection``.
        self.looks: list[tuple[np.ndarray, np.ndarray]] = []
        self.history: list[dict] = []
        #: Seconds of the slowest step and the last validation / checkpoint / save per stage,
        #: for stopping within ``max_minutes`` (kept in checkpoints).
        self.timing: dict[str, float] = {}
        #: Share of loss and validation queries read with their task label (none when the
        #: model does not read labels).
        self.task_label_share = config.task_label_share if model_config.read_task_labels else 0.0
        #: Validation queries' task labels: kept for a seeded ``task_label_share`` of them.
        keep = (np.random.default_rng([config.seed, 2]).random(len(data.validation))
                < self.task_label_share)
        self.validation_tasks = [t if k else None for t, k in zip(data.validation.tasks, keep)]
        #: The bank items the fitted models are read from at validation (None: all of them).
        self.validation_items = validation_items(data, config.validation_reads, config.seed)
        #: The direct logit's start, chosen before step 0 (``choose_start``).
        self.start: dict | None = None
        #: With ``start_queries`` or ``difficulty_queries`` 'train': the loss queries the
        #: start or the difficulty weights are picked on (bank rows)
        #: and their task indices as read: every label, when the model reads labels (-1:
        #: none). The task head was fitted on these very queries (``fit_task_head``), so
        #: reading them without labels would flatter it; test queries carry labels.
        self.start_rows, self.start_tasks = self._start_queries()

    # ------------------------------------------------------------------ data
    def _rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, step, self.accelerator.process_index])

    def sample(self, step: int) -> tuple[np.ndarray, np.ndarray, Evidence, torch.Tensor]:
        """(loss bank rows, evidence bank rows, the step's evidence, labels (B, M')) of
        ``step``: the training models, then the pseudo-models."""
        c, data = self.config, self.data
        rng = self._rng(step)
        n_queries = c.queries_per_step if c.stage(step) == "encoder" else c.llm_queries_per_step
        rows = rng.choice(data.loss_rows, min(n_queries, len(data.loss_rows)), replace=False)
        # A loss query, and its same-text twins, are never evidence in their own step.
        own = np.flatnonzero(np.isin(data.text_groups, data.text_groups[rows]))
        near = np.setdiff1d(np.unique(data.neighbours[rows].ravel()), own)
        free = np.setdiff1d(np.arange(len(data.bank.item_ids)), np.concatenate([own, near]))
        random_part = rng.choice(free, min(c.evidence_max, len(free)), replace=False)
        pool = np.concatenate([near, random_part])
        m = len(data.train_models)
        outcomes = self.outcomes[:, pool]
        observed = self.observed[:, pool]
        labels = self.outcomes[:, rows].T
        success = self.pool_loo[:, pool]
        task_success = self.task_success
        whole_success = [self.pool_loo]  # over the whole bank, for the ridge fits
        if c.pseudo_models and m >= 2:
            mix_out, mix_lab, mix_success, mix_task = [], [], [], []
            for _ in range(c.pseudo_models):
                a, b = rng.choice(m, 2, replace=False)
                pick_b = torch.from_numpy(rng.random(len(data.tasks)) < 0.5)
                take = pick_b[self.item_tasks]  # per item: from b?
                row = torch.where(take, self.outcomes[b], self.outcomes[a])
                mix_out.append(row[pool])
                mix_lab.append(row[rows])
                # Read against a pool without its two parents, as a known model is
                # against one without itself.
                without = data.bank.pool_success_without([a, b])
                whole_success.append(torch.from_numpy(without[None]).float())
                mix_success.append(torch.from_numpy(without[pool]).float())
                mix_task.append(torch.from_numpy(data.bank.task_means(without,
                                                                      len(data.tasks))).float())
            outcomes = torch.cat([outcomes, torch.stack(mix_out)])
            observed = torch.cat([observed, torch.ones(len(mix_out), len(pool), dtype=bool)])
            labels = torch.cat([labels, torch.stack(mix_lab, dim=1)], dim=1)
            success = torch.cat([success, torch.stack(mix_success)])
            task_success = torch.cat([task_success, torch.stack(mix_task)])
        mask = observed.clone()
        aptitude_mode = rng.random(len(mask)) >= c.bank_share
        for j in np.flatnonzero(aptitude_mode):
            size = int(rng.integers(c.evidence_min, c.evidence_max + 1))
            keep = np.zeros(len(pool), dtype=bool)
            keep[len(near) + rng.choice(len(random_part), min(size, len(random_part)),
                                        replace=False)] = True
            mask[j] &= torch.from_numpy(keep)
        evidence = Evidence(self.embeddings[pool], self.item_tasks[pool], outcomes, success,
                            mask, task_success, torch.from_numpy(aptitude_mode),
                            *self._difficulty_fields(torch.cat(whole_success), task_success,
                                                     pool, own))
        return rows, pool, evidence, labels

    def _difficulty_fields(self, success: torch.Tensor, task_success: torch.Tensor,
                           pool: np.ndarray | torch.Tensor, own: np.ndarray) -> tuple:
        """``Evidence``'s ``difficulty_weights`` and ``shared_*`` fields: the candidates'
        ridge fits of the query's difficulty over the bank (``success`` (M, N)), then the whole
        training pool's success on the ``pool`` items, per task, and its ridge fit; both fits
        in one solve, without the items ``own`` (None without ``difficulty_ridge``)."""
        weights = shared_weights = None
        if self.ridge is not None:
            fitted = self.ridge.weights(torch.cat([success, self.pool_whole]),
                                        torch.cat([task_success, self.task_whole]),
                                        torch.from_numpy(np.union1d(own, self.unscored)))
            weights, shared_weights = fitted[:-1], fitted[-1:]
        return weights, self.pool_whole[:, pool], self.task_whole, shared_weights

    def known_tasks(self, step: int, rows: np.ndarray) -> torch.Tensor:
        """(B,) the loss queries' task indices, -1 for those read without their label (a
        ``task_label_share`` of them keep it), so the router learns both kinds of input."""
        tasks = self.item_tasks[rows].clone()
        rng = np.random.default_rng([self.config.seed, step, self.accelerator.process_index, 1])
        tasks[torch.from_numpy(rng.random(len(rows)) >= self.task_label_share)] = -1
        return tasks

    # ------------------------------------------------------------------ loss
    def losses(self, step: int) -> dict[str, torch.Tensor]:
        rows, _, evidence, labels = self.sample(step)
        evidence = evidence.to(self.device)
        labels = labels.to(self.device)
        unwrapped = self.accelerator.unwrap_model(self.network)
        batch = None
        if self.config.stage(step) == "llm" and unwrapped.llm is not None:
            texts = [self.data.texts[r] for r in rows]
            batch = unwrapped.pack_queries(texts, evidence.n_candidates).to(self.device)
        out = self.network(self.embeddings[rows].to(self.device), evidence, batch,
                           self.known_tasks(step, rows).to(self.device))
        logits = out.logits
        pointwise = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        irt = nn.functional.binary_cross_entropy_with_logits(out.encoder.irt_logit, labels)
        task = nn.functional.cross_entropy(out.encoder.task_logits,
                                           self.item_tasks[rows].to(self.device))
        solved = labels.sum(dim=1) > 0
        listwise = logits.sum() * 0.0
        if solved.any():
            share = labels[solved] / labels[solved].sum(dim=1, keepdim=True)
            listwise = -(share * nn.functional.log_softmax(logits[solved], dim=1)).sum(1).mean()
        c = self.config
        total = (c.weight_pointwise * pointwise + c.weight_listwise * listwise
                 + c.weight_irt * irt + c.weight_task * task)
        return {"loss": total, "pointwise": pointwise, "listwise": listwise, "irt": irt,
                "task": task}

    # ------------------------------------------------------------ validation
    def validate(self, stage: str) -> dict:
        """Routing metrics on the validation queries (``validation_probabilities``)."""
        probs, scores = self.validation_probabilities(stage)
        self.last_validation = (probs, scores)
        return {"val_auc": M.auc(probs, scores), "val_query_auc": M.query_auc(probs, scores),
                "val_log_loss": M.log_loss(probs, scores),
                "val_routed_accuracy": M.routed_accuracy(probs, scores)}

    def validation_probabilities(self, stage: str, items: list[str] | None | str = "config"
                                 ) -> tuple[np.ndarray, np.ndarray]:
        """(P(right), scores), validation queries x the validation table's models: a
        ``task_label_share`` of the queries with their task label, the rest without, as
        training reads them (both uses of the router count). The models are the validation
        models, read from their aptitude answers, or every fitted model reading its whole
        bank or only ``validation_items`` (its aptitude items, or as many sampled ones; through
        the LLM in the llm stage, the encoder's answer before it); ``items``: other bank items
        to read them from ('config': ``validation_items``)."""
        router, validation = self.router, self.data.validation
        models = list(validation.models)  # the validation models, or the fitted ones
        router.network = self.accelerator.unwrap_model(self.network)
        router._evidence = None
        router.progress = False
        queries = Queries(validation.texts, tasks=self.validation_tasks,
                          embeddings=self.data.validation_embeddings)
        # In the encoder stage the gate is 0: the encoder's answer is the router's, no LLM pass.
        router.read_through_llm = stage == "llm"
        router.evidence_items = self.validation_items if items == "config" else items
        try:
            probs = router.predict_proba(queries, models)
        finally:
            router.read_through_llm = True
            router.evidence_items = None  # the evidence cache is keyed on it
        router.progress = self.config.progress
        return probs, validation.scores[models].to_numpy(dtype=float)

    def _start_queries(self) -> tuple[np.ndarray, torch.Tensor]:
        if "train" not in (self.config.start_queries, self.config.difficulty_queries):
            return np.zeros(0, dtype=np.int64), torch.zeros(0, dtype=torch.long)
        scored = self.observed[:, self.data.loss_rows].all(dim=0).numpy()
        candidates = np.asarray(self.data.loss_rows)[scored]
        if len(candidates) == 0:
            raise ValueError("start_queries 'train': no loss query has a score for every "
                             "fitted model")
        rng = np.random.default_rng([self.config.seed, 3])
        rows = np.sort(rng.choice(candidates, min(self.config.start_train_queries,
                                                  len(candidates)), replace=False))
        tasks = (self.item_tasks[rows].clone() if self.router.config.read_task_labels
                 else torch.full((len(rows),), -1, dtype=torch.long))
        return rows, tasks

    def start_probabilities(self, items: list[str] | None | str = "config"
                            ) -> tuple[np.ndarray, np.ndarray]:
        """(P(right), scores) of the encoder's answer on the ``start_rows`` loss queries x the
        fitted models (``start_logits``)."""
        logits, _, scores = self.start_logits(items)
        return 1.0 / (1.0 + np.exp(-logits)), scores

    def start_logits(self, items: list[str] | None | str = "config"
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(logits, the query's difficulty the start reads (None: off), scores) of the encoder's
        answer on the
        ``start_rows`` loss queries x the fitted models, each ``START_BATCH`` of them read
        against the bank without themselves and their same-text twins (leave-batch-out, as a
        test query is never in the bank), the models reading what validation reads (their
        whole bank, or ``validation_items``) or only the bank ``items`` given (read as
        onboarded)."""
        data, rows = self.data, self.start_rows
        items = self.validation_items if items == "config" else items
        network = self.accelerator.unwrap_model(self.network)
        network.eval()
        mask = self.observed.clone()
        if items is not None:
            read = np.isin(np.asarray(data.bank.item_ids), items)
            mask &= torch.from_numpy(read)[None]
        logits = np.zeros((len(rows), len(data.train_models)))
        difficulty = (np.zeros_like(logits) if network.encoder.difficulty_k else None)
        onboarded = torch.full((len(data.train_models),), items is not None)
        size = START_BATCH
        with torch.no_grad():
            for begin in range(0, len(rows), size):
                batch = rows[begin:begin + size]
                own = np.isin(data.text_groups, data.text_groups[batch])
                pool = torch.from_numpy(np.flatnonzero(~own))
                evidence = Evidence(self.embeddings[pool], self.item_tasks[pool],
                                    self.outcomes[:, pool], self.pool_loo[:, pool],
                                    mask[:, pool], self.task_success, onboarded,
                                    *self._difficulty_fields(self.pool_loo, self.task_success,
                                                             pool, np.flatnonzero(own))
                                    ).to(self.device)
                out = network(self.embeddings[batch].to(self.device), evidence, None,
                              self.start_tasks[begin:begin + size].to(self.device))
                logits[begin:begin + size] = out.logits.double().cpu().numpy()
                if difficulty is not None:
                    difficulty[begin:begin + size] = (
                        out.encoder.start_difficulty.double().cpu().numpy())
        return logits, difficulty, self.outcomes[:, rows].T.double().numpy()

    def _start_probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        if self.config.start_queries == "train":
            return self._timed("start_train", self.start_probabilities)
        return self._timed("validation_encoder", self.validation_probabilities, "encoder")

    def fit_task_head(self) -> dict | None:
        """The task head alone, ``task_head_steps`` full-batch AdamW steps on the loss queries'
        labels, before the start is chosen: validation reads a ``task_label_share`` of its
        queries without their label, through this head, and an untrained one reads each as
        every task at once (the per-task prior then loses each task's level, a kNN start
        does not). The step of lowest cross-entropy on the labelled validation queries is
        kept (a head sure of the wrong task misreads a log). Every process fits the same head
        from the same data. Returns its cross-entropy and accuracy on the loss and validation
        queries (None: off)."""
        steps = self.config.task_head_steps
        if not steps:
            return None
        head = self.accelerator.unwrap_model(self.network).encoder.task_head
        rows = torch.from_numpy(np.asarray(self.data.loss_rows, dtype=np.int64))
        x, y = self.embeddings[rows].to(self.device), self.item_tasks[rows].to(self.device)
        vy = self.router.task_indices(self.data.validation.tasks, len(self.data.validation))
        labelled = vy >= 0
        vx = torch.from_numpy(np.asarray(self.data.validation_embeddings, dtype=np.float32))
        vx, vy = vx[labelled].to(self.device), vy[labelled].to(self.device)
        optimizer = torch.optim.AdamW(head.parameters(), lr=TASK_HEAD_LR,
                                      weight_decay=self.config.weight_decay)
        best = (math.inf, 0, None)  # (validation cross-entropy, step, state)
        for step in range(1, steps + 1):
            head.train()
            loss = nn.functional.cross_entropy(head(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if len(vy):  # early stopping: a head sure of wrong tasks misreads a log
                head.eval()
                with torch.no_grad():
                    held = float(nn.functional.cross_entropy(head(vx), vy))
                if held < best[0]:
                    best = (held, step, {k: v.clone() for k, v in head.state_dict().items()})
        if best[2] is not None:
            head.load_state_dict(best[2])
        head.eval()
        with torch.no_grad():
            logits = head(x)
            record = {"steps": steps, "kept_step": best[1] if best[2] is not None else steps,
                      "train_cross_entropy": float(nn.functional.cross_entropy(logits, y)),
                      "train_accuracy": float((logits.argmax(1) == y).float().mean())}
            if len(vy):
                v = head(vx)
                record["validation_cross_entropy"] = float(nn.functional.cross_entropy(v, vy))
                record["validation_accuracy"] = float((v.argmax(1) == vy).float().mean())
        return record

    def choose_start(self) -> dict:
        """Before training: the direct logit's start (``start_knn``, ``start_knn_weight``)
        that scores best by ``start_select_on`` on the ``start_queries`` (validation, or loss
        queries left out of the bank), from the grids (the untrained encoder's answer is that
        start), then the onboarded candidates' own (``choose_onboarded_start``). Every process
        computes the same choice."""
        c, model = self.config, self.router.config
        shrinks = (sorted({float(s) for s in c.start_prior_shrink_grid})
                   or [model.start_prior_shrink])
        if not c.start_knn_grid and len(shrinks) == 1:
            self._apply_start(model.start_knn, model.start_knn_weight, shrinks[0])
            chosen = {**self._start_fields(), "selected_on": "config"}
        else:
            best, searched = self._search_starts(shrinks, self._start_probabilities,
                                                 self._apply_start,
                                                 new_models=c.split in MODEL_SPLITS)
            self._apply_start(best["start_knn"], best["start_knn_weight"],
                              best["start_prior_shrink"])
            chosen = {**self._start_fields(),
                      "selected_on": ("validation" if c.start_queries == "validation" else
                                      f"train ({len(self.start_rows)} loss queries out of the "
                                      f"bank)"), **searched}
        onboarded = self.choose_onboarded_start()
        return {**chosen, **({"onboarded": onboarded} if onboarded else {}),
                **self.choose_difficulty_weight()}

    def _search_starts(self, shrinks: list[float], probabilities, apply, *,
                       new_models: bool) -> tuple[dict, dict]:
        """Every (shrink, start_knn, weight) of the grids, applied by ``apply`` and scored
        by ``start_select_on`` on ``probabilities()``; a kNN start must beat the best prior
        (k = 0) by ``start_min_gain_se`` (resampling the candidates too where the start
        serves ``new_models``, and counting that it is the best of the kNN starts tried:
        ``_paired_margin``). Returns (the start kept, what was tried)."""
        c, model = self.config, self.router.config
        knn_grid = sorted({int(k) for k in c.start_knn_grid}) or [model.start_knn]
        base_weight = model.start_knn_weight  # k = 0 reads no weight; the config's is recorded
        tried, outputs = [], []
        start_on = None if c.start_select_on == "select_on" else c.start_select_on
        for shrink in shrinks:
            for k in knn_grid:
                for w in ([base_weight] if k == 0 or not c.start_knn_weight_grid
                          else sorted({float(w) for w in c.start_knn_weight_grid})):
                    apply(k, w, shrink)
                    outputs.append(probabilities())
                    tried.append({"start_knn": k, "start_knn_weight": float(w),
                                  "start_prior_shrink": float(shrink),
                                  "score": self.selection_statistic(*outputs[-1], start_on)(
                                      np.ones(len(outputs[-1][0])))})
        best = max(range(len(tried)), key=lambda i: tried[i]["score"])  # first of equals
        # The prior: the best start that reads no nearest items (whatever its shrink).
        priors = [i for i, t in enumerate(tried) if t["start_knn"] == 0]
        prior = max(priors, key=lambda i: tried[i]["score"]) if priors else None
        knn_starts = ([outputs[i] for i, t in enumerate(tried) if t["start_knn"] > 0]
                      if c.start_margin_counts_selection else None)
        margin = (None if prior is None or prior == best
                  else self._paired_margin(outputs[best], outputs[prior], c.start_min_gain_se,
                                           new_models, start_on, knn_starts))
        if margin is not None and not margin["kept"]:
            best = prior
        return tried[best], {"criterion": start_on or c.select_on, "tried": tried,
                             **({"margin_over_prior": margin} if margin is not None else {})}

    def choose_onboarded_start(self) -> dict | None:
        """With validation on the training models' banks (known models, as in a query
        split) and ``onboarded_start_evidence``: the start of candidates read from a few
        items (onboarded models) too, from the start grids with ``onboarded_start_shrink_grid``,
        on validation that reads the training models from those items only. A kNN over a
        known model's thousands of items is local; over an onboarded model's 140 it is its
        overall accuracy. None where it does not apply (a router validated as onboarded reads
        every candidate with the one start it picked)."""
        c = self.config
        items = self._onboarded_validation_items()
        if items is None:
            return None
        shrinks = sorted({float(s) for s in c.onboarded_start_shrink_grid})
        best, searched = self._search_starts(
            shrinks, lambda: self._timed("validation_encoder", self.validation_probabilities,
                                         "encoder", items),
            self._apply_onboarded_start, new_models=True)
        chosen = [best["start_knn"], best["start_knn_weight"], best["start_prior_shrink"]]
        self._apply_onboarded_start(*chosen)
        return {"onboarded_start": chosen, "reads": c.onboarded_start_evidence, **searched}

    def _picks_onboarded_difficulty(self) -> bool:
        c = self.config
        return bool(c.onboarded_start_evidence != "none" and not c.validates_as_onboarded
                    and self.router.config.difficulty_k and len(self._difficulty_grid()) >= 2)

    def _onboarded_validation_items(self) -> list[str] | None:
        """The bank items validation reads the training models from, as onboarded, where
        onboarded candidates get a start of their own (None: they do not)."""
        c = self.config
        if c.onboarded_start_evidence == "none" or c.validates_as_onboarded:
            return None
        return validation_items(self.data, c.onboarded_start_evidence, c.seed)

    def pick_onboarded_difficulty_weight(self) -> dict | None:
        """Where onboarded candidates get a start of their own: their weight on the query's
        difficulty too, lowest log-loss of ``start_difficulty_grid`` on validation that reads
        the training models as onboarded (``_onboarded_validation_items``). A per-task
        accuracy on 10 items a task says less of the query than a bank does, so the
        difficulty may earn more there than validation on the banks gives it. Applies the
        choice; None where it does not apply."""
        if not self._picks_onboarded_difficulty():
            return None
        items = self._onboarded_validation_items()
        on_train, picked_on = self._difficulty_read_on()

        def evaluate(beta: float) -> tuple[float, None]:
            probs, scores = self._timed("validation_encoder", self.validation_probabilities,
                                        "encoder", items)
            return M.log_loss(probs, scores), None
        tried, best, _ = self._lowest_log_loss(
            self._apply_onboarded_difficulty_weight,
            self._loss_queries_log_loss(items) if on_train else evaluate, on_train)
        return {"onboarded_difficulty_weight": tried[best]["difficulty_weight"],
                "reads": self.config.onboarded_start_evidence, "picked_on": picked_on,
                "tried": tried}

    def _apply_onboarded_difficulty_weight(self, beta: float | None) -> None:
        beta = None if beta is None else float(beta)
        self.accelerator.unwrap_model(self.network).encoder.onboarded_difficulty_weight = beta
        self.router.config.onboarded_difficulty_weight = beta

    def _apply_onboarded_start(self, k: int, weight: float, shrink: float) -> None:
        start = [int(k), float(weight), float(shrink)]
        self.accelerator.unwrap_model(self.network).encoder.onboarded_start = tuple(start)
        self.router.config.onboarded_start = start

    def _paired_margin(self, outputs: tuple, baseline: tuple, min_gain_se: float,
                       new_models: bool, on: str | None = None,
                       picked_among: list[tuple] | None = None) -> dict:
        """The selection statistic (``on``) of ``outputs`` - ``baseline`` (each validation
        (probabilities, scores) of the same queries and models), its paired bootstrap
        standard error over the queries, and whether the gain exceeds ``min_gain_se`` of
        them. ``picked_among``: the options ``outputs`` is one of (itself included), given
        where the caller's option says so (``start_margin_counts_selection``,
        ``checkpoint_margin_counts_selection``); with more than one, the gain must clear the
        Phi(min_gain_se) quantile of the largest centred gain among them over the same
        resamples (``required_one_option``: what one option would need). For a choice that
        serves ``new_models`` (outside the pool it was made on) with ``margin_over_models``,
        the gain must also clear ``min_gain_se`` standard errors of a bootstrap over the
        candidate models as well as the queries, the record's top level (the queries-only
        one beside); that one is for the option alone, as the models' resampling recomputes
        every option's statistic and costs minutes for a grid."""
        c, statistic = self.config, self.selection_statistic
        n_queries, n_models = outputs[0].shape
        # ``outputs`` first, then the other options (none to count without a margin)
        others = ([option for option in picked_among or [] if option is not outputs]
                  if min_gain_se else [])
        among = [outputs, *others]
        base = statistic(*baseline, on)
        # Every call resamples alike (same size and seed), so the options' gains pair.
        gains = [paired_weighted_bootstrap(statistic(*option, on), base, n_queries,
                                           samples=START_BOOTSTRAP_SAMPLES, seed=c.seed,
                                           differences=True) for option in among]
        gain = gains[0]
        one = min_gain_se * gain["standard_error"]
        queries = {"gain": gain["difference"], "standard_error": gain["standard_error"],
                   "required": one, "kept": bool(gain["difference"] > one)}
        if len(among) > 1:
            centred = np.nanmax([g["differences"] - g["difference"] for g in gains], axis=0)
            required = float(np.nanquantile(centred, NormalDist().cdf(min_gain_se)))
            queries.update(required=required, kept=bool(gain["difference"] > required),
                           required_one_option=one, options=len(among))
        if not (new_models and c.margin_over_models):
            return queries
        both = paired_two_way_bootstrap(
            lambda cols: statistic(outputs[0][:, cols], outputs[1][:, cols], on),
            lambda cols: statistic(baseline[0][:, cols], baseline[1][:, cols], on),
            n_queries, n_models, samples=START_BOOTSTRAP_SAMPLES, seed=c.seed)
        required = min_gain_se * both["standard_error"]
        return {"gain": both["difference"], "standard_error": both["standard_error"],
                "required": required,
                "kept": bool(both["difference"] > required and queries["kept"]),
                "over": "queries and models", "models": n_models, "queries_only": queries}

    def choose_difficulty_weight(self) -> dict:
        """The start's weight on the query's difficulty, lowest validation log-loss of
        ``start_difficulty_grid`` (it shifts every candidate of a query alike, so routing
        metrics cannot choose it); the model config's without a grid or a difficulty, or
        with ``pick_difficulty_before_training`` off."""
        model = self.router.config
        if (not model.difficulty_k or not self._difficulty_grid()
                or not self.config.pick_difficulty_before_training):
            self._apply_difficulty_weight(model.difficulty_weight)
            if self._repicks_difficulty() and self._difficulty_read_on()[0]:
                # The re-pick will read the loss queries: time one reading now, for
                # ``max_minutes``, and record the start's log-loss there.
                probs, scores = self._timed("start_train", self.start_probabilities)
                return {"difficulty_weight": model.difficulty_weight,
                        "train_log_loss": M.log_loss(probs, scores)}
            return {"difficulty_weight": model.difficulty_weight}
        tried, _, picked_on = self._try_difficulty_weights()
        onboarded = self.pick_onboarded_difficulty_weight()
        return {"difficulty_weight": model.difficulty_weight, "difficulty_tried": tried,
                "difficulty_picked_on": picked_on,
                **({"onboarded_difficulty": onboarded,
                    "onboarded_difficulty_weight": onboarded["onboarded_difficulty_weight"]}
                   if onboarded else {})}

    def _difficulty_grid(self) -> list[float]:
        return sorted({float(b) for b in self.config.start_difficulty_grid})

    def _difficulty_read_on(self) -> tuple[bool, str]:
        """(whether the difficulty weights of the network as it now stands are picked on the
        ``start_rows`` loss queries, what they are picked on, in words). With
        ``difficulty_queries`` 'train', on those queries unless the network is a trained step
        (the router kept at the encoder stage's end), which was fitted on them."""
        if self.config.difficulty_queries != "train":
            return False, "validation"
        step = self.best.get("step")
        if step:
            return False, (f"validation (the kept router, step {step}, was trained on the "
                           f"loss queries)")
        return True, f"train ({len(self.start_rows)} loss queries out of the bank)"

    def _try_difficulty_weights(self) -> tuple[list[dict], dict, str]:
        """Score the current network with every weight of the grid, on validation or the
        loss queries (``_difficulty_read_on``), and apply the one of lowest log-loss (the
        first, smallest, of equals). Returns (each weight's log-loss, the chosen weight's
        validation record, what the weights were picked on)."""
        on_train, picked_on = self._difficulty_read_on()

        def evaluate(beta: float) -> tuple[float, tuple]:
            record = self._timed("validation_encoder", self.validate, "encoder")
            return record["val_log_loss"], (record, self.last_validation)
        tried, best, outputs = self._lowest_log_loss(
            self._apply_difficulty_weight,
            self._loss_queries_log_loss("config") if on_train else evaluate, on_train)
        if on_train:  # the chosen weight's validation, the network as it now stands
            return tried, self._timed("validation_encoder", self.validate, "encoder"), picked_on
        record, self.last_validation = outputs[best]
        return tried, record, picked_on

    def _loss_queries_log_loss(self, items):
        """``evaluate(beta)`` for ``_lowest_log_loss`` on the loss queries (the training models
        reading ``items``, as ``start_logits``): they are read once, at the first weight, and
        every weight's logits are those plus (weight - the first) x the query's difficulty,
        which is how the weight enters the start (the encoder reads no weight)."""
        reading = {}

        def evaluate(beta: float) -> tuple[float, None]:
            if not reading:
                logits, difficulty, scores = self._timed("start_train", self.start_logits,
                                                         items)
                reading.update(logits=logits, difficulty=difficulty, scores=scores, beta=beta)
            logits = reading["logits"] + (beta - reading["beta"]) * reading["difficulty"]
            return M.log_loss(1.0 / (1.0 + np.exp(-logits)), reading["scores"]), None
        return evaluate

    def _lowest_log_loss(self, apply, evaluate, on_train: bool = False
                         ) -> tuple[list[dict], int, list]:
        """Every weight of ``start_difficulty_grid`` applied by ``apply`` and scored by
        ``evaluate(weight)`` -> (log-loss, output), on validation or (``on_train``) on the
        loss queries; the lowest (the first, smallest, of equals) is applied. Returns (each
        weight's log-loss, the chosen index, the outputs)."""
        key = "train_log_loss" if on_train else "val_log_loss"
        tried, outputs = [], []
        for beta in self._difficulty_grid():
            apply(beta)
            log_loss, output = evaluate(beta)
            tried.append({"difficulty_weight": beta, key: log_loss})
            outputs.append(output)
        best = min(range(len(tried)), key=lambda i: tried[i][key])
        apply(tried[best]["difficulty_weight"])
        return tried, best, outputs

    def _repicks_difficulty(self) -> bool:
        return bool(self.config.repick_difficulty_after_encoder
                    and self.router.config.difficulty_k and len(self._difficulty_grid()) >= 2)

    def repick_difficulty_weight(self) -> dict | None:
        """At the encoder stage's end: the difficulty weight again, from
        ``start_difficulty_grid``, on the validation log-loss of the router kept so far (the
        pick before training cannot see how the trained encoder reads the same signal). The
        main process validates; every process applies its choice. If the weight changes, the
        kept router is scored and saved again with it."""
        model = self.router.config
        if not self._repicks_difficulty():
            return None
        unwrapped = self.accelerator.unwrap_model(self.network)
        choice = [None]
        if self.accelerator.is_main_process:
            before = model.difficulty_weight
            current = unwrapped.trainable_state()
            unwrapped.load_trainable_state(self.best_state)  # the router kept so far
            onboarded_before = model.onboarded_difficulty_weight
            tried, record, picked_on = self._try_difficulty_weights()
            onboarded = self.pick_onboarded_difficulty_weight()  # leaves last_validation
            beta = model.difficulty_weight
            if beta != before:
                kept = {"step": self.best["step"], "stage": self.best["stage"], **record}
                self.best["score"] = self.selection_score(kept)
                self.best_validation = self.last_validation
                self.looks = []  # they were read with the weight before
                self.router.model_card_table = validation_card(kept)
            if beta != before or model.onboarded_difficulty_weight != onboarded_before:
                self._timed("save_best", self.save_best)
            unwrapped.load_trainable_state(current)
            choice = [{"difficulty_weight": beta, "trained_with": before, "tried": tried,
                       "picked_on": picked_on,
                       **({"onboarded": onboarded} if onboarded else {})}]
        choice = broadcast_object_list(choice)[0]
        self._apply_difficulty_weight(choice["difficulty_weight"])
        self.start["difficulty_weight"] = choice["difficulty_weight"]
        if "onboarded" in choice:
            weight = choice["onboarded"]["onboarded_difficulty_weight"]
            self._apply_onboarded_difficulty_weight(weight)
            self.start["onboarded_difficulty_weight"] = weight
        self.start["difficulty_after_encoder"] = choice
        return choice

    def _apply_start(self, k: int, weight: float, shrink: float) -> None:
        encoder = self.accelerator.unwrap_model(self.network).encoder
        for target in (encoder, self.router.config):
            target.start_knn, target.start_knn_weight = int(k), float(weight)
            target.start_prior_shrink = float(shrink)

    def _start_fields(self) -> dict:
        """The start as it is applied now (what step 0 records and checkpoints restore)."""
        model = self.router.config
        return {"start_knn": model.start_knn, "start_knn_weight": model.start_knn_weight,
                "start_prior_shrink": model.start_prior_shrink}

    def _apply_difficulty_weight(self, beta: float) -> None:
        self.accelerator.unwrap_model(self.network).encoder.difficulty_weight = float(beta)
        self.router.config.difficulty_weight = float(beta)

    def selection_score(self, record: dict) -> float:
        if self.config.select_on == "auc":
            return record["val_auc"]
        return record["val_routed_accuracy"] + record["val_query_auc"]

    def selection_statistic(self, probs: np.ndarray, scores: np.ndarray,
                            on: str | None = None):
        """``selection_score`` (or the criterion ``on``: 'routing', 'auc', 'log_loss', higher
        is better) of these validation probabilities as a function of query weights (a
        bootstrap resample's multiplicities; ones: the score itself)."""
        on = on or self.config.select_on
        if on == "auc":
            return WeightedPooledAuc(probs, scores >= M.CORRECT_AT)
        if on == "log_loss":
            losses = M.pair_log_losses(probs, scores).mean(axis=1)  # per query
            return lambda weights: float(-(weights * losses).sum() / weights.sum())
        routed = scores[np.arange(len(scores)), M.chosen(probs)]
        query_auc = M.query_aucs(probs, scores)
        mixed = np.isfinite(query_auc)
        query_auc = np.where(mixed, query_auc, 0.0)

        def score(weights: np.ndarray) -> float:
            return float((weights * routed).sum() / weights.sum()
                         + (weights * query_auc).sum() / max((weights * mixed).sum(), EPS))
        return score

    # ---------------------------------------------------------- checkpoints
    def _optimizer_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        state = self.optimizer.state_dict()
        tensors = {f"{i}.{k}": torch.as_tensor(v).contiguous().cpu()
                   for i, st in state["state"].items() for k, v in st.items()}
        return tensors, {"param_groups": state["param_groups"]}

    def save_checkpoint(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        target = self.output_dir / CHECKPOINTS / f"step-{self.step:07d}"
        if self.accelerator.is_main_process:
            with atomic_folder(target) as tmp:
                save_file(self.accelerator.unwrap_model(self.network).trainable_state(),
                          str(tmp / WEIGHTS_FILE))
                if self.best_state is not None:
                    save_file(self.best_state, str(tmp / BEST_WEIGHTS_FILE))
                if self.config.checkpoint_min_gain_se and self.best_validation is not None:
                    probs, scores = self.best_validation  # only the rule reads them
                    save_file({"probabilities": torch.from_numpy(np.array(probs)),
                               "scores": torch.from_numpy(np.array(scores))},
                              str(tmp / BEST_VALIDATION_FILE))
                if self.looks:
                    save_file({f"{i}.{key}": torch.from_numpy(np.array(value))
                               for i, look in enumerate(self.looks)
                               for key, value in zip(("probabilities", "scores"), look)},
                              str(tmp / LOOKS_FILE))
                tensors, groups = self._optimizer_tensors()
                save_file(tensors, str(tmp / OPTIMIZER_FILE))
                state = {"step": self.step, "best": self.best, "history": self.history,
                         "timing": self.timing, "start": self.start,
                         "optimizer": groups, "num_processes": self.accelerator.num_processes,
                         "train_config": self.config.__dict__}
                (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
            done = sorted(target.parent.glob("step-*"))
            for old in done[:-KEEP_CHECKPOINTS]:
                import shutil

                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return target

    def latest_checkpoint(self) -> Path | None:
        folder = self.output_dir / CHECKPOINTS
        done = sorted(p for p in folder.glob("step-*")
                      if p.is_dir() and (p / STATE_FILE).exists())
        return done[-1] if done else None

    def load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / STATE_FILE).read_text())
        if state["num_processes"] != self.accelerator.num_processes:
            raise ValueError(f"{path} was written by {state['num_processes']} processes; resume "
                             f"with the same number (now {self.accelerator.num_processes})")
        self.accelerator.unwrap_model(self.network).load_trainable_state(
            load_file(str(path / WEIGHTS_FILE)))
        if (path / BEST_WEIGHTS_FILE).exists():
            self.best_state = load_file(str(path / BEST_WEIGHTS_FILE))
        if (path / BEST_VALIDATION_FILE).exists():
            kept = load_file(str(path / BEST_VALIDATION_FILE))
            self.best_validation = (kept["probabilities"].numpy(), kept["scores"].numpy())
        if (path / LOOKS_FILE).exists():
            looks = load_file(str(path / LOOKS_FILE))
            self.looks = [(looks[f"{i}.probabilities"].numpy(), looks[f"{i}.scores"].numpy())
                          for i in range(len(looks) // 2)]
        tensors = load_file(str(path / OPTIMIZER_FILE))
        per_param: dict[int, dict] = {}
        for key, value in tensors.items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": per_param,
                                        "param_groups": state["optimizer"]["param_groups"]})
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.timing = dict(state["timing"])
        self.start = state["start"]
        self._apply_start(self.start["start_knn"], self.start["start_knn_weight"],
                          self.start["start_prior_shrink"])
        if "onboarded" in self.start:
            self._apply_onboarded_start(*self.start["onboarded"]["onboarded_start"])
        self._apply_difficulty_weight(self.start["difficulty_weight"])
        if self.start.get("onboarded_difficulty_weight") is not None:
            self._apply_onboarded_difficulty_weight(self.start["onboarded_difficulty_weight"])

    def save_best(self) -> None:
        if self.accelerator.is_main_process:
            self.router.network = self.accelerator.unwrap_model(self.network)
            for name, results in self.data.validation_results.items():
                # Onboarding's ability estimate, with the item side of the network saved.
                self.router.candidates[name].fitted_ability = \
                    self.router.fit_ability(results).tolist()
            # With the gate at 0 (the encoder stage) the LLM adds nothing: the router is saved
            # without it, so it scores the same without loading or running the LLM.
            without_llm = self.router.llm_adds_nothing
            self.router.save_pretrained(self.output_dir / BEST,  # atomic: a folder swap
                                        without_llm=without_llm)
            self.best["saved_without_llm"] = without_llm

    # -------------------------------------------------------------- training
    def _set_stage(self, step: int) -> str:
        """Learning rates of the step's stage; entering the llm stage, the best encoder."""
        c = self.config
        stage = c.stage(step)
        rates = {"encoder": c.lr_encoder, "llm_heads": 0.0, "lora": 0.0}
        if stage == "llm":
            rates = {"encoder": c.lr_encoder if c.train_encoder_with_llm else 0.0,
                     "llm_heads": c.lr_llm_heads, "lora": c.lr_lora}
            if step == c.encoder_steps and self.best_state is not None:
                self.accelerator.unwrap_model(self.network).load_trainable_state(
                    self.best_state)
        for group, name in zip(self.optimizer.param_groups, GROUPS):
            group["lr"] = rates[name]
        return stage

    def _out_of_time(self, started: float, stage: str) -> bool:
        """Whether one more step would leave too little of ``max_minutes`` to finish: the
        slowest step so far plus the slowest validation, checkpoint and save, with a safety
        factor (timings vary with the machine's load). Every process gets the same answer."""
        if not self.config.max_minutes:
            return False
        t = self.timing
        finish = (t.get(f"validation_{stage}", 0.0) + t.get("checkpoint", 0.0)
                  + t.get("save_best", 0.0))
        if stage == "encoder" and self._repicks_difficulty():
            # the re-pick after the last encoder step: a validation per weight or one reading
            # of the loss queries (twice with the onboarded candidates' own), the chosen
            # weight's validation, maybe a save
            readings = 2 if self._picks_onboarded_difficulty() else 1
            per_weight = len(self._difficulty_grid()) * t.get("validation_encoder", 0.0)
            finish += (readings * max(per_weight, t.get("start_train", 0.0))
                       + t.get("validation_encoder", 0.0) + t.get("save_best", 0.0))
        remaining = t.get(f"step_max_{stage}", 0.0) + finish
        projected = (time.perf_counter() - started
                     + max(TIME_SAFETY_FACTOR * remaining, remaining + TIME_SAFETY_SECONDS))
        if projected > self.config.max_minutes * 60:
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()

    def _timed(self, key: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        # The slowest so far: the time limit must hold for the worst case, not the last one.
        self.timing[key] = max(self.timing.get(key, 0.0), time.perf_counter() - t0)
        return out

    def _validate_and_keep_best(self, record: dict, stage: str) -> None:
        """Validate (main process) and save the router if it is the best so far."""
        self.network.eval()
        improved = [False]
        if self.accelerator.is_main_process:
            record.update(self._timed(f"validation_{stage}", self.validate, stage))
            score = self.selection_score(record)
            record["selection_score"] = score
            margin = self._margin_over_kept()
            if margin is not None:
                record["margin_over_kept"] = margin
            if (score > self.best["score"] + self._required_gain(stage)
                    and (margin is None or margin["kept"])):
                self.best = {"score": score, "step": self.step, "stage": stage}
                self.router.model_card_table = validation_card(record)
                self.best_validation = self.last_validation
                self.looks = []
                improved = [True]
            elif margin is not None and self.config.checkpoint_margin_counts_selection:
                self.looks.append(self.last_validation)
        # Every process keeps the same best state: the llm stage starts from it everywhere.
        if broadcast_object_list(improved)[0]:
            self.best_state = self.accelerator.unwrap_model(self.network).trainable_state()
            if self.accelerator.is_main_process:
                self._timed("save_best", self.save_best)
        self.accelerator.wait_for_everyone()

    def _margin_over_kept(self) -> dict | None:
        """With ``checkpoint_min_gain_se``: whether the router just validated beats the one
        kept so far by that many paired bootstrap standard errors of the selection score over
        the validation queries (and, in a model or family split with ``margin_over_models``,
        the validation models too), counting every step validated since the kept router was set
        with ``checkpoint_margin_counts_selection`` (None: the rule is off, or nothing is kept
        yet)."""
        c = self.config
        if not c.checkpoint_min_gain_se or self.best_validation is None:
            return None
        if self.last_validation is None:
            raise RuntimeError("checkpoint_min_gain_se: validate() recorded no probabilities")
        return self._paired_margin(
            self.last_validation, self.best_validation, c.checkpoint_min_gain_se,
            c.split in MODEL_SPLITS,
            picked_among=(self.looks + [self.last_validation]
                          if c.checkpoint_margin_counts_selection else None))

    def _required_gain(self, stage: str) -> float:
        """How much an llm-stage router must beat one kept from the encoder stage by."""
        if stage != "llm" or self.best.get("stage") == "llm":
            return 0.0
        return self.config.llm_min_gain_queries / max(1, len(self.data.validation))

    def _log(self, record: dict, log_path: Path) -> None:
        self.history.append(record)
        if self.accelerator.is_main_process:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _estimate_llm_validation(self) -> None:
        """Before the first LLM validation: its cost from one timed packed pass."""
        if "validation_llm" in self.timing or not self.router.config.use_llm:
            return
        unwrapped = self.accelerator.unwrap_model(self.network)
        texts = self.data.validation.texts[:max(1, self.config.llm_queries_per_step)]
        evidence = self.router.evidence()
        t0 = time.perf_counter()
        with torch.no_grad():
            batch = unwrapped.pack_queries(texts, evidence.n_candidates).to(self.device)
            unwrapped(torch.from_numpy(self.data.validation_embeddings[:len(texts)]).to(
                self.device), evidence, batch)
        per_query = (time.perf_counter() - t0) / len(texts)
        self.timing["validation_llm"] = per_query * len(self.data.validation)

    def train(self, stop_after: int | None = None) -> dict:
        """Run to the end (or ``stop_after`` steps, for tests that simulate a kill)."""
        if self.config.resume:
            latest = self.latest_checkpoint()
            if latest is not None:
                self.load_checkpoint(latest)
        total = self.config.total_steps
        main = self.accelerator.is_main_process
        self.output_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.output_dir / "log.jsonl"
        self.router.progress = self.config.progress
        started = time.perf_counter()
        if self.step == 0 and not self.history:
            # Step 0: the untrained router (the per-task prior), the baseline training must
            # beat (and the first estimate of what a validation costs).
            task_head = self.fit_task_head()
            self.start = self.choose_start()
            if task_head is not None:
                self.start["task_head"] = task_head
            record = {"step": 0, "stage": "initial", "seconds": 0.0,
                      "start": {k: self.start[k] for k in (
                          "start_knn", "start_knn_weight", "start_prior_shrink",
                          "difficulty_weight")}}
            self._validate_and_keep_best(record, "encoder")
            self._log(record, log_path)
        bar = tqdm(total=total, initial=self.step, desc="training CapSAT", unit="step",
                   disable=not main or not self.config.progress)
        while self.step < total:
            if stop_after is not None and self.step >= stop_after:
                break
            stage = self._set_stage(self.step)
            if stage == "llm":
                self._estimate_llm_validation()
            self.network.train()
            step_started = time.perf_counter()
            # Dropout draws from torch's generator: seeded per step, so a resumed run repeats
            # an uninterrupted one.
            torch.manual_seed(self.config.seed * 1_000_003 + self.step * 97
                              + self.accelerator.process_index)
            losses = self.losses(self.step)
            self.accelerator.backward(losses["loss"])
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.step += 1
            key = f"step_max_{stage}"
            self.timing[key] = max(self.timing.get(key, 0.0), time.perf_counter() - step_started)
            record = {"step": self.step, "stage": stage,
                      **{k: float(v.detach()) for k, v in losses.items()},
                      "gate": float(self.accelerator.unwrap_model(self.network).gate.detach())
                      if self.router.config.use_llm else None,
                      "seconds": round(time.perf_counter() - started, 2)}
            stage_end = self.step == self.config.encoder_steps or self.step == total
            last = self.step == total or self._out_of_time(started, stage)
            every = self.config.eval_every if stage == "encoder" else self.config.llm_eval_every
            if self.step % every == 0 or stage_end or last:
                self._validate_and_keep_best(record, stage)
            if stage == "encoder" and (self.step == self.config.encoder_steps or last):
                record["difficulty_after_encoder"] = self.repick_difficulty_weight()
            self._log(record, log_path)
            if main:
                bar.set_postfix(loss=f"{record['loss']:.3f}",
                                **({"val": f"{record['selection_score']:.3f}"}
                                   if "selection_score" in record else {}))
                bar.update(1)
            if self.step % self.config.checkpoint_every == 0 or last or stage_end:
                self._timed("checkpoint", self.save_checkpoint)
            if last:
                break
        bar.close()
        return {"step": self.step, "best": self.best, "completed": self.step == total,
                "start": self.start}
