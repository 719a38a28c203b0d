"""Config of the aptitude_prior router."""
from __future__ import annotations

from dataclasses import dataclass

from ..base import EmbeddingConfig, help_field


@dataclass
class AptitudePriorConfig(EmbeddingConfig):
    prior_weight: float = help_field(2.0, "pseudo-count of the model's overall aptitude "
                                          "accuracy in each per-task accuracy (when no "
                                          "validation table is given)")
    prior_weight_grid: list = help_field([0.5, 1.0, 2.0, 4.0, 8.0],
                                         "prior weights tried on the validation table (lowest "
                                         "log-loss wins)")
