"""Config of the knn_aptitude router."""
from __future__ import annotations

from dataclasses import dataclass

from ..base import EmbeddingConfig, help_field


@dataclass
class KnnAptitudeConfig(EmbeddingConfig):
    k: int = help_field(10, "aptitude items averaged when no validation table is given")
    prior_weight: float = help_field(2.0, "pseudo-count of the model's aptitude accuracy added "
                                          "to its neighbours' scores (when no validation table "
                                          "is given)")
    k_grid: list = help_field([3, 5, 10, 20, 40], "values of k tried on the validation table")
    prior_weight_grid: list = help_field([0.5, 1.0, 2.0, 4.0, 8.0],
                                         "prior weights tried on the validation table")
