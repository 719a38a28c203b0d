"""One multi-label classifier over all models (Srivatsa et al., 2024, "Harnessing the power of
multiple minds").

A small MLP maps the query embedding to one logit per candidate model and is trained with the
masked, soft-target binary cross-entropy of the shared network trainer (graded scores are
targets as they are; missing scores are masked). Epochs stop early on the validation loss.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..embedding_network.router import EmbeddingNetworkRouter
from .config import MultilabelConfig


class MultilabelRouter(EmbeddingNetworkRouter):
    """embedding -> hidden (ReLU) -> one logit per model; P = sigmoid(logit)."""

    name = "multilabel"
    config_class = MultilabelConfig

    def _build(self, input_dim: int, dim: int, prior: np.ndarray) -> nn.Module:
        network = nn.Sequential(nn.Linear(input_dim, dim), nn.ReLU(),
                                nn.Dropout(self.config.dropout),
                                nn.Linear(dim, len(self.models)))
        with torch.no_grad():
            # Start from the constant per-model prior; training only has to learn the
            # query-dependent part.
            network[-1].bias.copy_(torch.as_tensor(prior, dtype=torch.float32))
        return network
