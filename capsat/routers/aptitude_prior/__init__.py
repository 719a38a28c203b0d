"""The aptitude prior: per-task accuracy on the aptitude test's core items."""
from ..registry import register_router
from .config import AptitudePriorConfig

register_router("aptitude_prior", AptitudePriorConfig, f"{__name__}.router:AptitudePriorRouter",
                summary="per-task accuracy on the aptitude items, smoothed (onboards new "
                        "models from their aptitude test)")
