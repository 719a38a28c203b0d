"""From outcomes to CapSAT training material, with the data builders only.

The table, split and aptitude test come from ``prepare_experiment``, as ``capsat eval`` makes
them (same seed -> same split), so a trained router is evaluated on queries it never saw. The
aptitude test's core items are chosen on the train queries of the train models only.

The evidence bank is the train part: every train query is an item, with its embedding, task
and the train models' outcomes on it. Loss queries are train queries outside the aptitude
test (a seeded sample); a step's loss queries are never in that step's evidence.

With ``validation_model_share`` (model and family splits) some train models are validation
models: out of the bank's training rows, the pool and the loss, read at validation from
their aptitude answers as the test models are read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from capsat.capsat_model.bank import EvidenceBank
from data_builders.aptitude import AptitudeItem, AptitudeTest, aptitude_items
from data_builders.embeddings import DEFAULT_ENCODER, Embedder
from data_builders.experiment import prepare_experiment
from data_builders.outcomes import OutcomeTable
from data_builders.splits import (Split, model_families, normalise_text, sample_ids,
                                  validation_models)

from .config import TrainConfig


@dataclass
class TrainingData:
    table: OutcomeTable
    split: Split
    aptitude: AptitudeTest
    aptitude_items: list[AptitudeItem]
    tasks: list[str]
    bank: EvidenceBank  # the train part, the fitted models' outcomes
    texts: list[str]  # the bank items' texts (the LLM reads the loss queries')
    loss_rows: np.ndarray  # bank rows trained on (no core item), a seeded sample
    neighbours: np.ndarray  # (N, K) nearest other bank items of every item (cosine)
    text_groups: np.ndarray  # (N,) items with the same normalised text share a group
    validation: OutcomeTable  # validation queries x validated models (maybe subsampled)
    validation_embeddings: np.ndarray
    prices: dict[str, dict]
    #: Train models left out of fitting, onboarded from their aptitude answers (model ->
    #: {core item: score}) and validated on; empty: validation reads the fitted models.
    validation_results: dict[str, dict[str, float]]

    @property
    def validation_models(self) -> list[str]:
        return list(self.validation_results)

    @property
    def train_models(self) -> list[str]:
        """The models fitted on (the bank's training rows, in order)."""
        return [m for m in self.split.train_models if m not in self.validation_results]

    def summary(self) -> dict:
        return {"queries": len(self.table), "bank_items": len(self.bank.item_ids),
                "loss_queries": len(self.loss_rows),
                "validation_queries": len(self.validation), "test_queries": len(self.split.test),
                "train_models": len(self.train_models),  # fitted on
                "test_models": len(self.split.test_models),
                "validation_models": self.validation_models,
                "core_items": len(self.aptitude.item_ids)}


def validation_items(data: TrainingData, reads: str, seed: int) -> list[str] | None:
    """The bank items the fitted models are read from at validation (``reads``, as
    ``TrainConfig.validation_reads``): None for the whole bank, the core items, or ('sampled')
    as many items per task, drawn (seeded) from the other bank items every fitted model has
    a score on. The core items were chosen for agreeing with these very models' abilities,
    so they read them sharper than they read a model new to them."""
    if reads == "bank":
        return None
    if reads == "aptitude":
        return sorted(data.aptitude.item_ids)
    if reads != "sampled":
        raise ValueError(f"unknown validation evidence {reads!r}")
    bank, core = data.bank, data.aptitude.item_ids
    scored = ~np.isnan(bank.outcomes[:len(data.train_models)]).any(axis=0)
    rng = np.random.default_rng([seed, 5])
    items = []
    for task, ids in sorted(data.aptitude.items.items()):
        t = data.tasks.index(task)
        pool = [i for i in np.flatnonzero(scored & (bank.tasks == t))
                if bank.item_ids[i] not in core]
        if len(pool) < len(ids):
            raise ValueError(f"validation_evidence 'sampled': task {task!r} has {len(pool)} "
                             f"bank items outside the aptitude test, fewer than its {len(ids)} "
                             f"core items")
        items += [bank.item_ids[i] for i in rng.choice(pool, len(ids), replace=False)]
    return sorted(items)


def prices(table: OutcomeTable, train_ids) -> dict[str, dict]:
    """Per-model price: the model card's per-token prices, or the mean train cost per call."""
    out = {}
    for model in table.models:
        card = table.model_info.get(model, {})
        price = {k: card[k] for k in ("input_price", "output_price", "price_unit") if k in card}
        if table.costs is not None:
            price["mean_cost_per_call"] = float(table.costs.loc[list(train_ids), model].mean())
            price["cost_unit"] = table.cost_unit
        out[model] = price
    return out


def text_groups(texts: list[str]) -> np.ndarray:
    """(N,) a group id per item, shared by items of the same normalised text."""
    return np.unique([normalise_text(t) for t in texts], return_inverse=True)[1]


def nearest_neighbours(embeddings: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """(N, k) the k most similar other items of each item, by cosine; an item's same-text
    twins (one question under two ids) are not its neighbours, as across splits."""
    x = torch.from_numpy(embeddings.astype(np.float32))
    k = min(k, len(groups) - 1)
    out = np.zeros((len(groups), k), dtype=np.int64)
    for start in range(0, len(groups), 1024):
        sim = x[start:start + 1024] @ x.T
        twins = torch.from_numpy(groups[start:start + 1024, None] == groups[None, :])
        sim[twins] = -2.0
        out[start:start + 1024] = torch.topk(sim, k, dim=1).indices.numpy()
    return out


def prepare(config: TrainConfig, *, encoder: str = DEFAULT_ENCODER,
            progress: bool = True) -> TrainingData:
    """Everything a CapSAT training run reads; ``encoder`` is the model's
    ``capability_encoder`` (the sentence encoder of instructions and evidence items)."""
    experiment = prepare_experiment(config.data, config.split, models=config.models or None,
                                    held_out=config.held_out or None, seed=config.seed,
                                    test_size=config.test_size,
                                    validation_size=config.validation_size,
                                    k_per_task=config.k_per_task)
    table, split, aptitude = experiment.table, experiment.split, experiment.aptitude
    held = validation_models(split, config.validation_model_share)
    fitted = [m for m in split.train_models if m not in held]
    train = experiment.train_of_train_models().subset(models=fitted)
    tasks = sorted(set(train.tasks))
    embedder = Embedder(encoder, progress=progress)
    embeddings = embedder.encode(train.texts, desc="embedding the evidence bank")
    scores = train.scores.to_numpy(dtype=float)
    families = None
    if config.pool_without_family:  # a model's pool leaves out its family, as a new family's
        group = {m: g for g, kin in enumerate(model_families(train.models).values())
                 for m in kin}
        families = np.array([group[m] for m in train.models])
    bank = EvidenceBank(train.query_ids, embeddings,
                        np.array([tasks.index(t) for t in train.tasks], dtype=np.int64),
                        np.nansum(scores, axis=1), (~np.isnan(scores)).sum(axis=1).astype(float),
                        scores.T.copy(), np.ones(len(train.models), dtype=bool), families)
    core = set(aptitude.item_ids)
    candidates = [i for i, q in enumerate(train.query_ids) if q not in core]
    loss_rows = np.array(sample_ids(candidates, config.max_train_queries, config.seed),
                         dtype=np.int64)
    validation = table.subset(sample_ids(split.validation, config.max_validation_queries,
                                         config.seed + 1), held or fitted)
    groups = text_groups(train.texts)
    return TrainingData(
        table, split, aptitude, aptitude_items(table, aptitude), tasks, bank, train.texts,
        loss_rows, nearest_neighbours(embeddings, groups, config.neighbours), groups, validation,
        embedder.encode(validation.texts, desc="embedding validation queries"),
        prices(table, split.train), experiment.aptitude_results(held))
