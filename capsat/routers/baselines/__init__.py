"""Reference routers: random (the floor), best single model, and the oracle (the ceiling)."""
from ..registry import register_router
from .config import BestSingleConfig, OracleConfig, RandomConfig

register_router("random", RandomConfig, f"{__name__}.router:RandomRouter",
                summary="uniformly random candidate (the floor)")
register_router("best_single", BestSingleConfig, f"{__name__}.router:BestSingleRouter",
                summary="each model's mean training score: the constant per-model prior")
register_router("oracle", OracleConfig, f"{__name__}.router:OracleRouter",
                summary="reads the test labels: the ceiling, never a router")
