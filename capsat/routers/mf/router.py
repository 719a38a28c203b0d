"""Matrix-factorisation router in the style of EmbedLLM (Zhuang et al. 2024).

Each model m has a learned embedding e_m (dim D); a query's sentence embedding q is projected
to the same space by a linear map W. The logit of success is the dot product plus a per-model
bias: logit(q, m) = e_m . (W q) + c_m.

EmbedLLM puts a linear classifier over e_m * (W q); a linear classifier's weights fold into W,
so it is a dot product with one shared bias. A per-model bias c_m instead holds each model's base
rate (it starts at the logit of the model's smoothed training accuracy, the ``best_single``
prior), so the factors only have to learn how a query moves a model away from its base rate.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..embedding_network.router import EmbeddingNetworkRouter
from .config import MatrixFactorisationConfig


class MatrixFactorisation(nn.Module):
    """logit(q, m) = e_m . (W q) + c_m."""

    def __init__(self, input_dim: int, n_models: int, dim: int, prior: np.ndarray,
                 dropout: float):
        super().__init__()
        self.project = nn.Linear(input_dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.model_embeddings = nn.Parameter(torch.randn(n_models, dim) * 0.1)
        self.model_bias = nn.Parameter(torch.as_tensor(prior, dtype=torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(x)) @ self.model_embeddings.T + self.model_bias


class MatrixFactorisationRouter(EmbeddingNetworkRouter):
    """EmbedLLM-style factorisation: per-model embeddings against projected query embeddings."""

    name = "mf"
    config_class = MatrixFactorisationConfig

    def _build(self, input_dim, dim, prior):
        return MatrixFactorisation(input_dim, len(self.models), dim, prior, self.config.dropout)

    def model_embeddings(self):
        """The learned model vectors e_m (models x D) and biases c_m, as a DataFrame."""
        import pandas as pd

        if self.network is None:
            raise RuntimeError("mf router is not fitted")
        vectors = self.network.model_embeddings.detach().numpy().astype(float)
        frame = pd.DataFrame(vectors, index=pd.Index(self.models, name="model"),
                             columns=[f"e_{k}" for k in range(vectors.shape[1])])
        frame["bias"] = self.network.model_bias.detach().numpy().astype(float)
        return frame
