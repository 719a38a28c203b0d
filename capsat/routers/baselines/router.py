"""Reference routers: random (the floor), best single model, and the oracle (the ceiling)."""
from __future__ import annotations

import hashlib

import numpy as np

from data_builders.outcomes import OutcomeTable

from ..base import Queries, Router
from .config import BestSingleConfig, OracleConfig, RandomConfig


class RandomRouter(Router):
    """Scores are uniform noise, so the routed model is a uniformly random candidate."""

    name = "random"
    config_class = RandomConfig

    def _fit(self, train, train_queries, validation, validation_queries):
        pass

    def _predict(self, queries: Queries) -> np.ndarray:
        # Seeded per query text, so a query's scores do not depend on the batch it is in.
        rows = []
        for text in queries.texts:
            digest = hashlib.sha1(text.encode("utf-8")).digest()
            rng = np.random.default_rng([self.config.seed, int.from_bytes(digest[:8], "little")])
            rows.append(rng.random(len(self.models)))
        return np.array(rows)


class BestSingleRouter(Router):
    """Every query gets each model's mean training score: the constant per-model prior.

    Its routing always picks the model with the best training accuracy, and its AUC is the
    bar that a query-aware router must clear.
    """

    name = "best_single"
    config_class = BestSingleConfig

    def _fit(self, train, train_queries, validation, validation_queries):
        means = train.scores.mean(axis=0, skipna=True)
        if means.isna().any():
            raise ValueError(f"no training scores for {list(means.index[means.isna()])}")
        self.prior = means.to_numpy(dtype=float)

    def _predict(self, queries: Queries) -> np.ndarray:
        return np.tile(self.prior, (len(queries), 1))

    def state_arrays(self):
        return {"prior": self.prior}

    def load_state_arrays(self, arrays):
        self.prior = arrays["prior"]


class OracleRouter(Router):
    """Reads the true scores of the very queries it routes: the upper bound, never a router.

    ``fit`` must be given the evaluation outcomes; queries are looked up by id.
    """

    name = "oracle"
    config_class = OracleConfig
    cheats = True

    def _fit(self, train: OutcomeTable, train_queries, validation, validation_queries):
        self.scores = train.scores

    def _predict(self, queries: Queries) -> np.ndarray:
        if queries.ids is None:
            raise ValueError("the oracle looks queries up by id; these queries have no ids")
        missing = [q for q in queries.ids if q not in self.scores.index]
        if missing:
            raise KeyError(f"oracle has no labels for {len(missing)} queries, e.g. {missing[:3]}")
        return self.scores.loc[queries.ids, self.models].fillna(0.0).to_numpy(dtype=float)

    def state_arrays(self):
        return {"scores": self.scores.to_numpy(dtype=float)}

    def state_json(self):
        return {"query_ids": list(self.scores.index)}

    def load_state_json(self, state):
        self._ids = state["query_ids"]

    def load_state_arrays(self, arrays):
        import pandas as pd

        self.scores = pd.DataFrame(arrays["scores"], index=self._ids, columns=self.models)
