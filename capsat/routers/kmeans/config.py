"""Config of the kmeans router(s)."""
from __future__ import annotations

from dataclasses import dataclass

from ..base import EmbeddingConfig, help_field


@dataclass
class KMeansConfig(EmbeddingConfig):
    n_clusters: int = help_field(16, "number of clusters K when no validation table is given")
    n_clusters_grid: list = help_field([1, 2, 4, 8, 16, 32, 64, 128],
                                       "values of K tried on the validation table (lowest "
                                       "log-loss wins); values above the training size are "
                                       "skipped")
    prior_weight: float = help_field(
        5.0, "pseudo-count of the model's training mean added to each cluster's scores (> 0)")
    n_init: int = help_field(4, "K-means restarts (fixed, so the result does not depend on "
                                "the scikit-learn version's default)")
    max_iter: int = help_field(300, "K-means iterations per restart")
    seed: int = help_field(0, "seed of the K-means initialisation")
