"""From outcomes to CapSAT training material, with the data builders only.

The table, split and aptitude test come from ``prepare_experiment``, as ``capsat eval`` makes
them (same seed -> same split), so a trained router is evaluated on queries it never saw. The
aptitude test's core items are chosen on the train queries of the train models only, and
removed from training and validation.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from capsat.capsat_model.router import Candidate
from data_builders.aptitude import (AptitudeTest, exclude_core_items, represent_models,
                                    score_models, task_keywords)
from data_builders.experiment import prepare_experiment
from data_builders.kshot import build_kshot_groups
from data_builders.outcomes import OutcomeTable
from data_builders.splits import Split, sample_ids

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
    experiment = prepare_experiment(config.data, config.split, models=config.models or None,
                                    held_out=config.held_out or None, seed=config.seed,
                                    test_size=config.test_size,
                                    validation_size=config.validation_size,
                                    k_per_task=config.k_per_task)
    table, split, aptitude = experiment.table, experiment.split, experiment.aptitude
    train_all = table.subset(list(split.train))  # every model: held-out ones are scored on the
    keywords = task_keywords(train_all, config.keywords)  # core items to be onboarded
    accuracy = score_models(aptitude, train_all)
    representations = represent_models(aptitude, train_all, keywords)
    price = prices(table, split.train)
    candidates = [Candidate(m, {t: float(accuracy.loc[m, t]) for t in accuracy.columns},
                            representations[m], price[m]) for m in table.models]

    train = exclude_core_items(experiment.train_of_train_models(), aptitude)
    train = train.subset(sample_ids(train.query_ids, config.max_train_queries, config.seed))
    validation = table.subset(sample_ids(split.validation, config.max_validation_queries,
                                         config.seed + 1), list(split.train_models))
    groups = build_kshot_groups(train, config.kshot, config.seed, exclude=aptitude)
    return TrainingData(table, split, train, validation, aptitude, keywords, candidates, groups)
