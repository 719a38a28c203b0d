"""Training settings shared by the routers that are a small torch network over the query
embedding (mf, irt, multilabel). Importing this module does not import torch."""
from __future__ import annotations

from dataclasses import dataclass

from ..base import EmbeddingConfig, help_field


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
