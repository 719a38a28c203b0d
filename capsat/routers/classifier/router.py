"""One classifier per model (Srivatsa et al., 2024, "Harnessing the power of multiple minds").

For every candidate, a logistic regression on the query embedding predicts whether that model
answers correctly. Graded scores are turned into labels by ``score >= 0.5`` (a half-right
answer counts as right). A model whose training labels are all one class cannot be fitted: it
gets a constant probability, its Laplace-smoothed training mean. The regularisation C is
chosen per model on the validation table. Coefficients are stored as plain arrays and applied
with numpy, so loading needs no scikit-learn object.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit, logit

from ..base import Queries, Router
from ..common import (
    check_grid,
    has_rows,
    masked_log_loss,
    query_matrix,
    require_state,
    score_matrix,
    smoothed_model_means,
)
from .config import ClassifierConfig

POSITIVE_SCORE = 0.5


class ClassifierRouter(Router):
    """Per-model logistic regression on the query embedding: P = sigmoid(x . w_m + b_m)."""

    name = "classifier"
    config_class = ClassifierConfig
    uses_embeddings = True

    def _fit(self, train, train_queries, validation, validation_queries):
        cfg = self.config
        check_grid("C", [cfg.C], minimum=1e-12)
        x = np.asarray(train_queries.embeddings, dtype=np.float64)
        scores = score_matrix(train)
        prior = smoothed_model_means(scores, self.models)
        use_validation = has_rows(validation)
        if use_validation:
            grid = check_grid("C_grid", cfg.C_grid, minimum=1e-12)
            x_val = query_matrix(self, validation_queries, x.shape[1])
            val_scores = score_matrix(validation)
        self.coef = np.zeros((len(self.models), x.shape[1]))
        self.intercept = np.zeros(len(self.models))
        self.chosen_C: list[float | None] = []
        for j, model in enumerate(self.models):
            rows = ~np.isnan(scores[:, j])
            labels = scores[rows, j] >= POSITIVE_SCORE
            if labels.all() or not labels.any():
                # One class only: no decision boundary to learn.
                self.intercept[j] = logit(prior[j])
                self.chosen_C.append(None)
                continue
            val_rows = (~np.isnan(val_scores[:, j])) if use_validation else None
            if not use_validation or not val_rows.any():
                fits = self._logistic_path(x[rows], labels, [float(cfg.C)])
                best = float(cfg.C)
            else:
                fits = self._logistic_path(x[rows], labels, grid)
                losses = {c: masked_log_loss(expit(x_val[val_rows] @ w + b),
                                             val_scores[val_rows, j])
                          for c, (w, b) in fits.items()}
                best = min(losses, key=lambda c: (losses[c], grid.index(c)))
            self.coef[j], self.intercept[j] = fits[best]
            self.chosen_C.append(best)
        self.selected_on = "validation" if use_validation else "config"

    def _logistic_path(self, x: np.ndarray, labels: np.ndarray, grid: list[float]
                       ) -> dict[float, tuple[np.ndarray, float]]:
        """Logistic regressions for every C of ``grid``: {C: (coef, intercept)}.

        Fitted from the strongest regularisation up, each warm-started from the previous
        solution (the problem is convex, so only the speed changes).
        """
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(max_iter=self.config.max_iter, warm_start=True)
        fits = {}
        for C in sorted(set(grid)):
            with warnings.catch_warnings():
                if len(grid) > 1:
                    # A grid value far from the optimum may stop at max_iter; its validation
                    # log-loss judges it like any other. A single C warns as usual.
                    warnings.simplefilter("ignore", ConvergenceWarning)
                model.set_params(C=C).fit(x, labels)
            fits[C] = (model.coef_[0].astype(np.float64), float(model.intercept_[0]))
        return fits

    def _predict(self, queries: Queries) -> np.ndarray:
        x = query_matrix(self, queries, self.coef.shape[1])
        return expit(x @ self.coef.T + self.intercept)

    @property
    def constant_models(self) -> list[str]:
        """Models whose training labels were one class (they get a constant probability)."""
        return [m for m, c in zip(self.models, self.chosen_C) if c is None]

    # ------------------------------------------------------------- save / load
    def state_arrays(self):
        return {"coef": self.coef, "intercept": self.intercept}

    def load_state_arrays(self, arrays):
        self.coef, self.intercept = arrays["coef"], arrays["intercept"]
        if self.coef.shape[0] != len(self.models) or self.intercept.shape != (len(self.models),):
            raise ValueError(f"saved classifier router: coef {self.coef.shape} / intercept "
                             f"{self.intercept.shape} do not match {len(self.models)} models")

    def state_json(self):
        return {"chosen_C": self.chosen_C, "selected_on": self.selected_on}

    def load_state_json(self, state):
        require_state(self.name, state, ["chosen_C", "selected_on"])
        self.chosen_C, self.selected_on = list(state["chosen_C"]), state["selected_on"]
