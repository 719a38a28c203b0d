"""From outcomes to CapSAT training material, with the data builders only.

The table, split and candidate pool are made exactly as ``capsat eval`` makes them (same
seed -> same split), so a trained router is evaluated on queries it never saw. The aptitude
test's core items come from train and are removed from training and validation.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from capsat.capsat_model.router import Candidate
from data_builders.aptitude import (AptitudeTest, exclude_core_items, represent_models,
                                    score_models, select_core_items, task_keywords)
from data_builders.instructions import build_kshot_groups
from data_builders.outcomes import OutcomeTable
from data_builders.sources import load_outcomes
from data_builders.splits import Split, make_split, sample_ids

from .config import TrainConfig


@dataclass
class TrainingData:
    table: OutcomeTable
    split: Split
    train: OutcomeTable  # train queries x train models, core items removed, maybe subsampled
    validation: OutcomeTable  # validation queries x train models (maybe subsampled)
    aptitude: AptitudeTest
    keywords: dict[str, str]
    candidates: list[Candidate]  # every model of the data: train models and held-out ones
    groups: pd.DataFrame  # listwise groups over ``train``: model, query_ids, positive_index

    def summary(self) -> dict:
        return {"queries": len(self.table), "train_queries": len(self.train),
                "validation_queries": len(self.validation), "test_queries": len(self.split.test),
                "train_models": len(self.split.train_models),
                "test_models": len(self.split.test_models), "core_items": len(
                    self.aptitude.item_ids), "groups": len(self.groups)}


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


def prepare(config: TrainConfig) -> TrainingData:
    table = load_outcomes(config.data)
    if config.models:
        table = table.subset(models=table.check_models(config.models))
    table = table.complete()  # as `capsat eval` does, so the splits agree
    held = {}
    if config.held_out:
        held = {("held_out_models" if config.split == "model" else "held_out_tasks"):
                list(config.held_out)}
    split = make_split(table, config.split, test_size=config.test_size,
                       validation_size=config.validation_size, seed=config.seed, **held)
    train_all = table.subset(list(split.train))
    aptitude = select_core_items(train_all, config.k_per_task, config.seed)
    keywords = task_keywords(train_all, config.keywords)
    # Every model's aptitude results, held-out ones too: onboarding needs nothing else.
    accuracy = score_models(aptitude, table.subset(list(split.train)))
    representations = represent_models(aptitude, table.subset(list(split.train)), keywords)
    price = prices(table, split.train)
    candidates = [Candidate(m, {t: float(accuracy.loc[m, t]) for t in accuracy.columns},
                            representations[m], price[m]) for m in table.models]

    train = exclude_core_items(table.subset(list(split.train), list(split.train_models)),
                               aptitude)
    train = train.subset(sample_ids(train.query_ids, config.max_train_queries, config.seed))
    validation = table.subset(sample_ids(split.validation, config.max_validation_queries,
                                      config.seed + 1), list(split.train_models))
    groups = build_kshot_groups(train, representations, config.kshot, config.seed,
                                exclude=aptitude).to_pandas()
    groups = groups[["group_id", "model", "query_ids", "positive_index"]]
    return TrainingData(table, split, train, validation, aptitude, keywords, candidates, groups)
