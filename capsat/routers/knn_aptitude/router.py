"""kNN correctness over the aptitude items only: a candidate's mean score on the k core items
most similar to the query, shrunk toward its aptitude accuracy.

Every candidate, known or new, is described by its core-item results alone, so a new model
is onboarded from its aptitude test: the kNN baseline of the onboarding setting. k and the
prior weight are chosen on validation with the training models.
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
    unit_rows,
)
from .config import KnnAptitudeConfig


class KnnAptitudeRouter(Router):
    """Mean score of the k most similar aptitude items; onboards from the aptitude alone."""

    name = "knn_aptitude"
    config_class = KnnAptitudeConfig
    uses_embeddings = True
    can_onboard = True

    def _fit(self, train, train_queries, validation, validation_queries):
        cfg = self.config
        check_grid("k", [cfg.k], minimum=1, integer=True)
        check_grid("prior_weight", [cfg.prior_weight], minimum=1e-9)
        self.items = [q for t in self.aptitude.tasks for q in self.aptitude.items[t]]
        rows = train.queries.index.get_indexer(self.items)
        self.item_embeddings = unit_rows(np.asarray(train_queries.embeddings,
                                                    dtype=np.float64)[rows]).astype(np.float32)
        self.item_scores = score_matrix(train)[rows].T  # models x items
        if not has_rows(validation):
            self.k, self.prior_weight = int(cfg.k), float(cfg.prior_weight)
            self.selection = {"selected_on": "config"}
            return
        ks = check_grid("k_grid", cfg.k_grid, minimum=1, integer=True)
        weights = check_grid("prior_weight_grid", cfg.prior_weight_grid, minimum=1e-9)
        order = self._order(validation_queries)
        candidates = {(k, w): self._estimate(order, k, w) for k in ks for w in weights}
        (self.k, self.prior_weight), losses = pick_by_log_loss(candidates,
                                                               score_matrix(validation))
        self.selection = {"selected_on": "validation",
                          "validation_log_loss": losses[(self.k, self.prior_weight)]}

    def _order(self, queries: Queries) -> np.ndarray:
        """(n, items) item indices, most similar first (ties: item order)."""
        x = unit_rows(query_matrix(self, queries, self.item_embeddings.shape[1]))
        return np.argsort(-(x @ self.item_embeddings.T.astype(np.float64)), axis=1,
                          kind="stable")

    def _estimate(self, order: np.ndarray, k: int, weight: float) -> np.ndarray:
        observed = ~np.isnan(self.item_scores)
        values = np.where(observed, self.item_scores, 0.0)
        prior = (values.sum(axis=1) + 1.0) / (observed.sum(axis=1) + 2.0)
        nearest = order[:, :min(k, order.shape[1])]  # (n, k)
        sums = values[:, nearest].sum(axis=2).T  # (n, models)
        counts = observed[:, nearest].sum(axis=2).T
        return shrunk_means(sums, counts, prior, weight)

    def _predict(self, queries: Queries) -> np.ndarray:
        return self._estimate(self._order(queries), self.k, self.prior_weight)

    def onboard(self, name, results, *, price=None, replace=False, scope="aptitude"):
        results = self.check_onboarding(name, results, replace, scope)
        row = np.array([results.get(q, np.nan) for q in self.items])
        self.item_scores = self._with_model_row(self.item_scores, name, row)

    # ------------------------------------------------------------- save / load
    def state_arrays(self):
        return {"item_embeddings": self.item_embeddings, "item_scores": self.item_scores}

    def load_state_arrays(self, arrays):
        self.item_embeddings, self.item_scores = arrays["item_embeddings"], arrays["item_scores"]

    def state_json(self):
        return {"items": self.items, "k": self.k, "prior_weight": self.prior_weight,
                **self.selection}

    def load_state_json(self, state):
        require_state(self.name, state, ["items", "k", "prior_weight", "selected_on"])
        self.items, self.k = list(state["items"]), int(state["k"])
        self.prior_weight = float(state["prior_weight"])
        self.selection = {key: value for key, value in state.items()
                          if key not in ("items", "k", "prior_weight")}
