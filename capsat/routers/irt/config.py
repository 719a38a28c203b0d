"""Config of the irt router."""
from __future__ import annotations

from dataclasses import dataclass

from ..base import help_field
from ..embedding_network.config import NetworkConfig


@dataclass
class IrtConfig(NetworkConfig):
    dim: int = help_field(16, "dimension D of the ability and discrimination vectors")
    experts: int = help_field(4, "number of experts in the mixture (softmax gate over them)")
    hidden: int = help_field(64, "hidden width of each expert's MLP")
