"""Item-response-theory router in the style of IrtNet.

A mixture of experts over the query embedding gives each query a difficulty b_q (a scalar) and
a discrimination vector a_q (dimension D); each model m has an ability vector theta_m (D):

    P(model m answers q correctly) = sigmoid(a_q . theta_m - b_q)

Two choices make the parameters readable:

- a_q is kept non-negative (softplus). Then a higher ability in any dimension never lowers a
  model's chance on any query, so theta_m reads as "ability" and a_q as "how much this query
  rewards each ability"; unconstrained, (a, theta) and (-a, -theta) fit equally well and the
  sign of an ability means nothing.
- theta is centred over the models (abilities are relative to the pool's average). Otherwise a
  common shift of every theta_m by c trades against b_q + c . a_q and the difficulty is not
  identified; centred, b_q is exactly minus the query's mean logit over the pool, so a harder
  query has a larger b_q whatever the pool. No expressiveness is lost: b_q is free per query.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from data_builders.errors import DataError

from ..base import STATE_FILE, QueriesLike, as_queries
from ..common import check_grid
from ..embedding_network.router import EmbeddingNetworkRouter, predict_network
from .config import IrtConfig


class IrtNetwork(nn.Module):
    """Softmax-gated mixture of MLP experts -> (a_q, b_q); learned abilities theta."""

    def __init__(self, input_dim: int, n_models: int, dim: int, experts: int, hidden: int,
                 dropout: float, mean_prior_logit: float):
        super().__init__()
        self.dim = dim
        self.gate = nn.Linear(input_dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                          nn.Linear(hidden, dim + 1))
            for _ in range(experts))
        with torch.no_grad():
            for expert in self.experts:
                # Start every query at the pool's mean base rate: logit = -b_q.
                expert[-1].bias[dim] = -mean_prior_logit
        self.theta = nn.Parameter(torch.randn(n_models, dim) * 0.1)

    def query_parameters(self, x: torch.Tensor):
        """(a_q (n, D) >= 0, b_q (n,), gate weights (n, experts))."""
        gate = torch.softmax(self.gate(x), dim=-1)
        outputs = torch.stack([expert(x) for expert in self.experts], dim=1)
        mixed = (gate.unsqueeze(-1) * outputs).sum(dim=1)
        return nn.functional.softplus(mixed[:, :self.dim]), mixed[:, self.dim], gate

    def abilities(self) -> torch.Tensor:
        return self.theta - self.theta.mean(dim=0, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        discrimination, difficulty, _ = self.query_parameters(x)
        return discrimination @ self.abilities().T - difficulty.unsqueeze(1)


class IrtRouter(EmbeddingNetworkRouter):
    """IRT with query parameters from a mixture of experts and per-model ability vectors."""

    name = "irt"
    config_class = IrtConfig

    def _check_config(self):
        super()._check_config()
        for name in ("experts", "hidden"):
            check_grid(name, [getattr(self.config, name)], minimum=1, integer=True)

    def _build(self, input_dim, dim, prior):
        config = self.config
        return IrtNetwork(input_dim, len(self.models), dim, config.experts, config.hidden,
                          config.dropout, float(np.mean(prior)))

    def _after_fit(self, x_train, y_train):
        # The scalar summary of each model: its mean predicted success on the training queries.
        self.train_mean_probability = predict_network(self.network, x_train).mean(axis=0)

    def state_arrays(self):
        return {**super().state_arrays(), "train_mean_probability": self.train_mean_probability}

    def load_state_arrays(self, arrays):
        arrays = dict(arrays)
        if "train_mean_probability" not in arrays:
            raise DataError("saved irt router lacks an array", file=STATE_FILE,
                            field="train_mean_probability")
        self.train_mean_probability = arrays.pop("train_mean_probability")
        super().load_state_arrays(arrays)

    def _check_fitted(self):
        if self.network is None:
            raise RuntimeError("irt router is not fitted")

    def abilities(self) -> pd.DataFrame:
        """Models x (theta_0 .. theta_{D-1}, ability_norm, mean_probability).

        Abilities are relative to the pool's average; ``mean_probability`` is the model's mean
        predicted success on the training queries.
        """
        self._check_fitted()
        with torch.no_grad():
            theta = self.network.abilities().numpy().astype(float)
        frame = pd.DataFrame(theta, index=pd.Index(self.models, name="model"),
                             columns=[f"theta_{k}" for k in range(theta.shape[1])])
        frame["ability_norm"] = np.linalg.norm(theta, axis=1)
        frame["mean_probability"] = np.asarray(self.train_mean_probability, dtype=float)
        return frame

    def query_parameters(self, queries: QueriesLike) -> pd.DataFrame:
        """Per query: difficulty b_q, the norm of the discrimination a_q, and the expert with
        the largest gate weight. Indexed by query id (position when the queries have none)."""
        self._check_fitted()
        queries = as_queries(queries)
        if queries.embeddings is None:
            queries.embeddings = self.embed(queries)
        x = torch.as_tensor(self._features(queries))
        self.network.eval()
        with torch.no_grad():
            discrimination, difficulty, gate = self.network.query_parameters(x)
        index = pd.Index(queries.ids if queries.ids is not None else range(len(queries)),
                         name="query_id")
        return pd.DataFrame({"difficulty": difficulty.numpy().astype(float),
                             "discrimination_norm": discrimination.norm(dim=1).numpy()
                             .astype(float),
                             "top_expert": gate.argmax(dim=1).numpy()}, index=index)
