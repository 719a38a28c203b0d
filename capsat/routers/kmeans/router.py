"""Cluster router (Srivatsa et al., 2024, "Harnessing the power of multiple minds").

Training queries are clustered with K-means on their normalised sentence embeddings; a query's
P(model correct) is the model's mean score in the query's cluster, shrunk toward the model's
training mean (small clusters say little). K is chosen on the validation table.
"""
from __future__ import annotations

import numpy as np

from ..base import Queries, Router
from ..common import (
    check_grid,
    has_rows,
    pick_by_log_loss,
    query_matrix,
    require_state,
    score_matrix,
    shrunk_means,
    smoothed_model_means,
)
from .config import KMeansConfig


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the closest centroid (Euclidean) for each row of ``x``; ties to the lowest."""
    distances = (x ** 2).sum(axis=1)[:, None] - 2.0 * x @ centroids.T \
        + (centroids ** 2).sum(axis=1)[None, :]
    return np.argmin(distances, axis=1)


class KMeansRouter(Router):
    """Per-cluster, per-model mean scores; a query reads the row of its nearest centroid."""

    name = "kmeans"
    config_class = KMeansConfig
    uses_embeddings = True

    def _fit(self, train, train_queries, validation, validation_queries):
        cfg = self.config
        check_grid("n_clusters", [cfg.n_clusters], minimum=1, integer=True)
        check_grid("prior_weight", [cfg.prior_weight], minimum=1e-9)
        check_grid("n_init", [cfg.n_init], minimum=1, integer=True)
        x = np.asarray(train_queries.embeddings, dtype=np.float64)
        scores = score_matrix(train)
        self.prior = smoothed_model_means(scores, self.models)
        if not has_rows(validation):
            if cfg.n_clusters > len(x):
                raise ValueError(f"n_clusters={cfg.n_clusters} exceeds the {len(x)} training "
                                 f"queries")
            self.centroids, self.table = self._cluster(x, scores, int(cfg.n_clusters))
            self.selection = {"selected_on": "config"}
            return
        grid = check_grid("n_clusters_grid", cfg.n_clusters_grid, minimum=1, integer=True)
        usable = [k for k in grid if k <= len(x)]
        if not usable:
            raise ValueError(f"every n_clusters_grid value exceeds the {len(x)} training queries")
        x_val = query_matrix(self, validation_queries, x.shape[1])
        fitted, candidates = {}, {}
        for k in usable:
            fitted[k] = self._cluster(x, scores, k)
            centroids, table = fitted[k]
            candidates[k] = table[nearest_centroid(x_val, centroids)]
        best, losses = pick_by_log_loss(candidates, score_matrix(validation))
        self.centroids, self.table = fitted[best]
        self.selection = {"selected_on": "validation", "validation_log_loss": losses[best],
                          "grid_tried": usable}

    def _cluster(self, x: np.ndarray, scores: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """K-means centroids (k x dim) and the shrunk per-cluster score table (k x models)."""
        from sklearn.cluster import KMeans

        cfg = self.config
        km = KMeans(n_clusters=k, n_init=cfg.n_init, max_iter=cfg.max_iter,
                    random_state=cfg.seed).fit(x)
        centroids = km.cluster_centers_.astype(np.float64)
        # Assign with the same rule as prediction, so training and serving agree exactly.
        labels = nearest_centroid(x, centroids)
        observed = ~np.isnan(scores)
        values = np.where(observed, scores, 0.0)
        sums = np.zeros((k, scores.shape[1]))
        counts = np.zeros((k, scores.shape[1]))
        np.add.at(sums, labels, values)
        np.add.at(counts, labels, observed)
        return centroids, shrunk_means(sums, counts, self.prior, self.config.prior_weight)

    def _predict(self, queries: Queries) -> np.ndarray:
        x = query_matrix(self, queries, self.centroids.shape[1])
        return self.table[nearest_centroid(x, self.centroids)]

    @property
    def n_clusters(self) -> int:
        return len(self.centroids)

    # ------------------------------------------------------------- save / load
    def state_arrays(self):
        return {"centroids": self.centroids, "table": self.table, "prior": self.prior}

    def load_state_arrays(self, arrays):
        self.centroids, self.table, self.prior = (arrays["centroids"], arrays["table"],
                                                  arrays["prior"])
        if len(self.centroids) != self._saved_n_clusters:
            raise ValueError(f"saved kmeans router: {len(self.centroids)} centroids, but its "
                             f"state says n_clusters={self._saved_n_clusters}")

    def state_json(self):
        return {"n_clusters": self.n_clusters, **self.selection}

    def load_state_json(self, state):
        require_state(self.name, state, ["n_clusters", "selected_on"])
        self._saved_n_clusters = int(state["n_clusters"])
        self.selection = {key: value for key, value in state.items() if key != "n_clusters"}
