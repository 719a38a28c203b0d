"""Config of the multilabel router."""
from __future__ import annotations

from dataclasses import dataclass

from ..base import help_field
from ..embedding_network.config import NetworkConfig


@dataclass
class MultilabelConfig(NetworkConfig):
    dim: int = help_field(256, "width of the hidden layer")
    learning_rate: float = help_field(1e-3, "AdamW learning rate")
    weight_decay: float = help_field(1e-4, "AdamW weight decay")
    dropout: float = help_field(0.1, "dropout on the hidden layer while training")
    batch_size: int = help_field(128, "queries per optimiser step")
    max_epochs: int = help_field(100, "upper bound on epochs; early stopping on the validation "
                                      "loss picks the epoch that is kept")
    patience: int = help_field(8, "epochs without a better validation loss before stopping")
