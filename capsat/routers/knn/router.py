"""kNN correctness predictor (Shnitzer et al., 2023, "Large language model routing with
benchmark datasets").

P(model correct | query) is the mean score of the model on the query's k nearest training
queries (cosine similarity of the normalised sentence embeddings), shrunk toward the model's
training mean so that no probability is exactly 0 or 1 and the log-loss stays finite.
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
    unit_rows,
)
from .config import KnnConfig


class KnnRouter(Router):
    """Mean score of the k most similar training queries, shrunk toward the model's mean.

    With a validation table, (k, prior_weight) is the pair of the grid with the lowest
    validation log-loss; one neighbour search for the largest k serves every k (prefix means).
    """

    name = "knn"
    config_class = KnnConfig
    uses_embeddings = True

    def _fit(self, train, train_queries, validation, validation_queries):
        cfg = self.config
        check_grid("k", [cfg.k], minimum=1, integer=True)
        check_grid("prior_weight", [cfg.prior_weight], minimum=1e-9)
        # Normalised here too: precomputed embeddings need not come from the Embedder.
        self.train_embeddings = unit_rows(
            np.asarray(train_queries.embeddings, dtype=np.float64)).astype(np.float32)
        self.train_scores = score_matrix(train)
        self.prior = smoothed_model_means(self.train_scores, self.models)
        if not has_rows(validation):
            self.k, self.prior_weight = int(cfg.k), float(cfg.prior_weight)
            self.selection = {"selected_on": "config"}
            return
        ks = check_grid("k_grid", cfg.k_grid, minimum=1, integer=True)
        weights = check_grid("prior_weight_grid", cfg.prior_weight_grid, minimum=1e-9)
        sums, counts = self._neighbour_sums(validation_queries, max(ks))
        candidates = {}
        for k in ks:
            depth = min(k, sums.shape[1]) - 1
            for w in weights:
                candidates[(k, w)] = shrunk_means(sums[:, depth], counts[:, depth],
                                                  self.prior, w)
        (self.k, self.prior_weight), losses = pick_by_log_loss(candidates,
                                                               score_matrix(validation))
        self.selection = {"selected_on": "validation",
                          "validation_log_loss": losses[(self.k, self.prior_weight)]}

    def _neighbour_blocks(self, queries: Queries, k: int):
        """Yield, per block of queries, the (block x k') indices of their nearest training
        queries, most similar first (k' = min(k, n_train))."""
        train = self.train_embeddings.astype(np.float64)
        x = unit_rows(query_matrix(self, queries, train.shape[1]))
        k = min(k, len(train))
        for start in range(0, len(x), self.config.batch_size):
            sim = x[start:start + self.config.batch_size] @ train.T
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            top_sim = np.take_along_axis(sim, top, axis=1)
            # Ties rank by training order, also across the k-th place (twin embeddings are
            # common), so the k nearest are a prefix of the k_max nearest: the validation
            # search and prediction then agree exactly.
            boundary = top_sim.min(axis=1, keepdims=True)
            for row in np.nonzero((sim >= boundary).sum(axis=1) > k)[0]:
                top[row] = np.argsort(-sim[row], kind="stable")[:k]
                top_sim[row] = sim[row, top[row]]
            order = np.lexsort((top, -top_sim), axis=1)
            yield np.take_along_axis(top, order, axis=1)

    def _neighbour_sums(self, queries: Queries, k_max: int) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative score sums and counts over each query's nearest training queries: two
        (n_queries x k' x n_models) arrays whose entry [:, j] covers the j + 1 nearest
        neighbours (a missing score counts for nothing)."""
        observed = ~np.isnan(self.train_scores)
        values = np.where(observed, self.train_scores, 0.0)
        sums, counts = [], []
        for neighbours in self._neighbour_blocks(queries, k_max):
            sums.append(np.cumsum(values[neighbours], axis=1))
            counts.append(np.cumsum(observed[neighbours], axis=1))
        return np.concatenate(sums), np.concatenate(counts)

    def _predict(self, queries: Queries) -> np.ndarray:
        observed = ~np.isnan(self.train_scores)
        values = np.where(observed, self.train_scores, 0.0)
        blocks = [shrunk_means(values[nb].sum(axis=1), observed[nb].sum(axis=1), self.prior,
                               self.prior_weight)
                  for nb in self._neighbour_blocks(queries, self.k)]
        return np.concatenate(blocks)

    # ------------------------------------------------------------- save / load
    def state_arrays(self):
        return {"train_embeddings": self.train_embeddings, "train_scores": self.train_scores,
                "prior": self.prior}

    def load_state_arrays(self, arrays):
        self.train_embeddings = arrays["train_embeddings"]
        self.train_scores = arrays["train_scores"]
        self.prior = arrays["prior"]

    def state_json(self):
        return {"k": self.k, "prior_weight": self.prior_weight, **self.selection}

    def load_state_json(self, state):
        require_state(self.name, state, ["k", "prior_weight", "selected_on"])
        self.k, self.prior_weight = int(state["k"]), float(state["prior_weight"])
        self.selection = {key: value for key, value in state.items()
                          if key not in ("k", "prior_weight")}
