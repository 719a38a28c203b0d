"""Config of the classifier router(s)."""
from __future__ import annotations

from dataclasses import dataclass

from ..base import EmbeddingConfig, help_field


@dataclass
class ClassifierConfig(EmbeddingConfig):
    C: float = help_field(0.3, "inverse L2 regularisation strength of each logistic regression "
                               "when no validation table is given (the usual pick on MMLU-Pro)")
    C_grid: list = help_field([0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
                              "values of C tried on the validation table, per model (lowest "
                              "validation log-loss wins)")
    max_iter: int = help_field(1000, "L-BFGS iterations per fit")
