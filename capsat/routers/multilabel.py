"""One multi-label classifier over all models (Srivatsa et al., 2024, "Harnessing the power of
multiple minds").

A small MLP maps the query embedding to one logit per candidate model and is trained with the
masked, soft-target binary cross-entropy of ``neural.fit_network`` (graded scores are targets
as they are; missing scores are masked). Epochs stop early on the validation loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .base import EmbeddingConfig, Queries, Router, help_field
from .common import (
    check_grid,
    has_rows,
    query_matrix,
    require_state,
    score_matrix,
    smoothed_model_means,
)
from .neural import fit_network, load_module_arrays, module_arrays, predict_network
from .registry import register_router


@dataclass
class MultilabelConfig(EmbeddingConfig):
    hidden: int = help_field(256, "width of the hidden layer")
    dropout: float = help_field(0.1, "dropout on the hidden layer while training")
    epochs: int = help_field(100, "maximum training epochs (all of them without validation)")
    batch_size: int = help_field(128, "queries per optimiser step")
    lr: float = help_field(1e-3, "AdamW learning rate")
    weight_decay: float = help_field(1e-4, "AdamW weight decay")
    patience: int = help_field(8, "epochs without a better validation loss before stopping")
    seed: int = help_field(0, "seed of the initialisation and of the batch order")


def build_network(in_dim: int, n_models: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, n_models))


@register_router
class MultilabelRouter(Router):
    """embedding -> hidden (ReLU) -> one logit per model; P = sigmoid(logit)."""

    name = "multilabel"
    config_class = MultilabelConfig
    uses_embeddings = True

    def _fit(self, train, train_queries, validation, validation_queries):
        cfg = self.config
        for name in ("hidden", "epochs", "batch_size"):
            check_grid(name, [getattr(cfg, name)], minimum=1, integer=True)
        check_grid("patience", [cfg.patience], minimum=1, integer=True)
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")
        x = np.asarray(train_queries.embeddings, dtype=np.float32)
        y = score_matrix(train)
        prior = smoothed_model_means(y, self.models)
        self.in_dim = int(x.shape[1])
        torch.manual_seed(cfg.seed)
        self.network = build_network(self.in_dim, len(self.models), cfg.hidden, cfg.dropout)
        with torch.no_grad():
            # Start from the constant per-model prior; training only has to learn the
            # query-dependent part.
            self.network[-1].bias.copy_(torch.as_tensor(np.log(prior / (1 - prior))))
        x_val = y_val = None
        if has_rows(validation):
            x_val = query_matrix(self, validation_queries, self.in_dim).astype(np.float32)
            y_val = score_matrix(validation)
        result = fit_network(self.network, x, y, x_val, y_val, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, lr=cfg.lr,
                             weight_decay=cfg.weight_decay, patience=cfg.patience,
                             seed=cfg.seed, desc="multilabel: training")
        self.fit_summary = {"best_epoch": result.best_epoch,
                         "epochs_run": len(result.train_losses),
                         "selected_on": "validation" if x_val is not None else "config"}
        if x_val is not None:
            self.fit_summary["validation_loss"] = result.best_validation_loss

    def _predict(self, queries: Queries) -> np.ndarray:
        x = query_matrix(self, queries, self.in_dim).astype(np.float32)
        return predict_network(self.network, x)

    # ------------------------------------------------------------- save / load
    def state_arrays(self):
        return module_arrays(self.network)

    def load_state_arrays(self, arrays):
        cfg = self.config
        self.network = build_network(self.in_dim, len(self.models), cfg.hidden, cfg.dropout)
        load_module_arrays(self.network, arrays)
        self.network.eval()

    def state_json(self):
        return {"in_dim": self.in_dim, **self.fit_summary}

    def load_state_json(self, state):
        require_state(self.name, state, ["in_dim", "best_epoch", "selected_on"])
        self.in_dim = int(state["in_dim"])
        self.fit_summary = {key: value for key, value in state.items() if key != "in_dim"}
