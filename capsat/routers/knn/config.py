"""Config of the knn router(s)."""
from __future__ import annotations

from dataclasses import dataclass

from ..base import EmbeddingConfig, help_field


@dataclass
class KnnConfig(EmbeddingConfig):
    k: int = help_field(80, "neighbours averaged when no validation table is given (the pick "
                            "on MMLU-Pro with ~8k training queries)")
    prior_weight: float = help_field(
        2.0, "pseudo-count of the model's training mean added to the neighbours' scores (> 0, "
             "so probabilities are never exactly 0 or 1); used when no validation is given")
    k_grid: list = help_field([1, 3, 5, 10, 20, 40, 80, 160],
                              "values of k tried on the validation table (lowest log-loss wins)")
    prior_weight_grid: list = help_field([0.5, 1.0, 2.0, 4.0, 8.0],
                                         "prior weights tried on the validation table")
    batch_size: int = help_field(1024, "queries scored per similarity block (bounds memory)")
