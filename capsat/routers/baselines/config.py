"""Config of the baselines router(s)."""
from __future__ import annotations

from dataclasses import dataclass

from ..base import RouterConfig, help_field


@dataclass
class RandomConfig(RouterConfig):
    seed: int = help_field(0, "seed of the random scores; the same query always gets the same "
                              "scores for the same seed")


@dataclass
class BestSingleConfig(RouterConfig):
    pass


@dataclass
class OracleConfig(RouterConfig):
    pass
