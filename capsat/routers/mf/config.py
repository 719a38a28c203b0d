"""Config of the mf router."""
from __future__ import annotations

from dataclasses import dataclass

from ..embedding_network.config import NetworkConfig


@dataclass
class MatrixFactorisationConfig(NetworkConfig):
    """EmbedLLM-style matrix factorisation: every field is the shared network's."""
