"""Matrix-factorisation router in the style of EmbedLLM (Zhuang et al. 2024).

Each model m has a learned embedding e_m (dim D); a query's sentence embedding q is projected
to the same space by a linear map W. The logit of success is the dot product plus a per-model
bias: logit(q, m) = e_m . (W q) + c_m.

EmbedLLM puts a linear classifier over e_m * (W q); a linear classifier's weights fold into W,
so it is a dot product with one shared bias. A per-model bias c_m instead holds each model's base
rate (it starts at the logit of the model's smoothed training accuracy, the ``best_single``
prior), so the factors only have to learn how a query moves a model away from its base rate.

This module also holds ``EmbeddingNetworkRouter``, the shared plumbing of the routers that are
a small torch network over the query embedding (``mf``, ``irt``): seeded construction, training
with ``neural.fit_network``, the optional size grid on validation, and save/load.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from data_builders.outcomes import OutcomeTable

from .base import EmbeddingConfig, Queries, Router, help_field
from .common import (
    check_grid,
    has_rows,
    query_matrix,
    require_state,
    score_matrix,
    smoothed_model_means,
)
from .neural import (
    FitResult,
    fit_network,
    load_module_arrays,
    module_arrays,
    predict_network,
)
from .registry import register_router


@dataclass
class NetworkConfig(EmbeddingConfig):
    """Training settings shared by the routers that are a network over the query embedding."""

    dim: int = help_field(32, "latent dimension D (model vectors and projected queries)")
    dim_choices: list = help_field([], "optional grid of D values tried in turn; the one with "
                                       "the lowest validation loss is kept (empty: just `dim`)")
    learning_rate: float = help_field(3e-3, "AdamW learning rate")
    weight_decay: float = help_field(1e-2, "AdamW weight decay")
    dropout: float = help_field(0.1, "dropout while training (mf: on the projected query; irt: "
                                     "on each expert's hidden layer)")
    batch_size: int = help_field(256, "queries per training batch")
    max_epochs: int = help_field(200, "upper bound on epochs; early stopping on the validation "
                                      "loss picks the epoch that is kept")
    patience: int = help_field(10, "epochs without a better validation loss before stopping")
    seed: int = help_field(0, "seed of the initial weights and of the batch order")


class EmbeddingNetworkRouter(Router):
    """A torch network from query embeddings (n, d) to success logits (n, models)."""

    uses_embeddings = True
    config_class = NetworkConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.network: nn.Module | None = None
        self.input_dim: int | None = None
        self.dim: int | None = None
        self.fit_result: FitResult | None = None

    @abstractmethod
    def _build(self, input_dim: int, dim: int, prior: np.ndarray) -> nn.Module:
        """A fresh network for ``len(self.models)`` models; ``prior`` are the base-rate logits
        (zeros when rebuilt for loading, where the saved weights replace them)."""

    def _seeded_build(self, input_dim: int, dim: int, prior: np.ndarray) -> nn.Module:
        # The initial weights come from the global torch RNG: seed it without disturbing the
        # caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return self._build(input_dim, dim, prior)

    def _fit(self, train: OutcomeTable, train_queries: Queries,
             validation: OutcomeTable | None, validation_queries: Queries | None) -> None:
        config = self.config
        self._check_config()
        dims = check_grid("dim_choices", config.dim_choices or [config.dim], minimum=1,
                          integer=True)
        x_train = np.asarray(train_queries.embeddings, dtype=np.float32)
        self.input_dim = int(x_train.shape[1])
        y_train = score_matrix(train)
        x_val = y_val = None
        if has_rows(validation):
            x_val = self._features(validation_queries)
            y_val = score_matrix(validation)
        elif len(dims) > 1:
            raise ValueError(f"{self.name}: dim_choices {dims} need a validation table to "
                             f"choose on")
        base_rate = smoothed_model_means(y_train, self.models)
        prior = np.log(base_rate / (1 - base_rate))
        best = None
        for dim in dims:
            network = self._seeded_build(x_train.shape[1], dim, prior)
            result = fit_network(network, x_train, y_train, x_val, y_val,
                                 epochs=config.max_epochs, batch_size=config.batch_size,
                                 lr=config.learning_rate, weight_decay=config.weight_decay,
                                 patience=config.patience, seed=config.seed,
                                 desc=f"{self.name} D={dim}")
            if best is None or result.best_validation_loss < best[2].best_validation_loss:
                best = (dim, network, result)
        self.dim, self.network, self.fit_result = best
        self._after_fit(x_train, y_train)

    def _after_fit(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        """Hook for summaries of the training data kept with the router."""

    def _check_config(self) -> None:
        config = self.config
        for name in ("dim", "batch_size", "patience"):
            check_grid(name, [getattr(config, name)], minimum=1, integer=True)
        check_grid("max_epochs", [config.max_epochs], minimum=0, integer=True)
        check_grid("learning_rate", [config.learning_rate], minimum=1e-12)
        check_grid("weight_decay", [config.weight_decay], minimum=0.0)
        if not 0.0 <= config.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")

    def _features(self, queries: Queries) -> np.ndarray:
        return query_matrix(self, queries, self.input_dim).astype(np.float32)

    def _predict(self, queries: Queries) -> np.ndarray:
        return predict_network(self.network, self._features(queries))

    # --------------------------------------------------------- save / load
    def state_json(self) -> dict:
        result = self.fit_result
        return {"input_dim": self.input_dim, "dim": self.dim,
                "best_epoch": result.best_epoch,
                "best_validation_loss": (None if not np.isfinite(result.best_validation_loss)
                                         else result.best_validation_loss),
                "train_losses": result.train_losses,
                "validation_losses": result.validation_losses}

    def load_state_json(self, state: dict) -> None:
        require_state(self.name, state, ["input_dim", "dim", "best_epoch", "best_validation_loss",
                                         "train_losses", "validation_losses"])
        self.input_dim, self.dim = int(state["input_dim"]), int(state["dim"])
        loss = state["best_validation_loss"]
        self.fit_result = FitResult(int(state["best_epoch"]),
                                    float("inf") if loss is None else float(loss),
                                    list(state["train_losses"]),
                                    list(state["validation_losses"]))

    def state_arrays(self) -> dict[str, np.ndarray]:
        return module_arrays(self.network)

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.network = self._build(self.input_dim, self.dim, np.zeros(len(self.models)))
        load_module_arrays(self.network, arrays)
        self.network.eval()


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


@dataclass
class MatrixFactorisationConfig(NetworkConfig):
    pass


@register_router
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
