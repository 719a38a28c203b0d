"""The aptitude prior: a candidate's accuracy on the aptitude test's core items of the query's
task, shrunk toward its overall core-item accuracy.

The baseline a router that onboards new models must beat: it is what the aptitude test says
about a model with no cleverness at all. Every candidate, known or new, is described by its
core-item results only. A query's task is its label when it has one, else the nearest task
centroid of the training queries.
"""
from __future__ import annotations

import numpy as np

from data_builders.aptitude import score_models

from ..base import Queries, Router
from ..common import (
    check_grid,
    has_rows,
    pick_by_log_loss,
    query_tasks,
    require_state,
    score_matrix,
    task_centroids,
)
from .config import AptitudePriorConfig


class AptitudePriorRouter(Router):
    """Per-task accuracy on the aptitude items, smoothed; onboards from the aptitude alone."""

    name = "aptitude_prior"
    config_class = AptitudePriorConfig
    uses_embeddings = True
    can_onboard = True

    def _fit(self, train, train_queries, validation, validation_queries):
        cfg = self.config
        check_grid("prior_weight", [cfg.prior_weight], minimum=1e-9)
        self.tasks = list(self.aptitude.tasks)
        accuracy = score_models(self.aptitude, train)  # models x tasks
        self.task_accuracy = accuracy.to_numpy(dtype=float)
        self.centroids = task_centroids(train_queries.embeddings, train.tasks, self.tasks)
        self.counts = np.array([len(self.aptitude.items[t]) for t in self.tasks], dtype=float)
        if not has_rows(validation):
            self.prior_weight, self.selection = float(cfg.prior_weight), {"selected_on": "config"}
            return
        weights = check_grid("prior_weight_grid", cfg.prior_weight_grid, minimum=1e-9)
        rows = query_tasks(validation_queries, self.tasks, self.centroids)
        candidates = {w: self._table(w)[:, rows].T for w in weights}
        self.prior_weight, losses = pick_by_log_loss(candidates, score_matrix(validation))
        self.selection = {"selected_on": "validation",
                          "validation_log_loss": losses[self.prior_weight]}

    def _table(self, weight: float) -> np.ndarray:
        """(models, tasks) accuracies shrunk toward each model's overall aptitude accuracy."""
        overall = (self.task_accuracy * self.counts).sum(axis=1) / self.counts.sum()
        return ((self.task_accuracy * self.counts + weight * overall[:, None])
                / (self.counts + weight))

    def task_labels(self) -> list[str] | None:
        return list(self.tasks)

    def _predict(self, queries: Queries) -> np.ndarray:
        rows = query_tasks(queries, self.tasks, self.centroids)
        return self._table(self.prior_weight)[:, rows].T

    def onboard(self, name, results, *, price=None, replace=False, scope="aptitude"):
        results = self.check_onboarding(name, results, replace, scope)
        task_of = self.aptitude.task_of()
        row = np.array([np.mean([v for q, v in results.items() if task_of[q] == t])
                        for t in self.tasks])
        self.task_accuracy = self._with_model_row(self.task_accuracy, name, row)

    # ------------------------------------------------------------- save / load
    def state_arrays(self):
        return {"task_accuracy": self.task_accuracy, "centroids": self.centroids,
                "counts": self.counts}

    def load_state_arrays(self, arrays):
        self.task_accuracy, self.centroids = arrays["task_accuracy"], arrays["centroids"]
        self.counts = arrays["counts"]

    def state_json(self):
        return {"tasks": self.tasks, "prior_weight": self.prior_weight, **self.selection}

    def load_state_json(self, state):
        require_state(self.name, state, ["tasks", "prior_weight", "selected_on"])
        self.tasks, self.prior_weight = list(state["tasks"]), float(state["prior_weight"])
        self.selection = {k: v for k, v in state.items() if k not in ("tasks", "prior_weight")}
