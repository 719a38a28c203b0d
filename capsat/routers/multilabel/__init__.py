"""One multi-label classifier over all models (Srivatsa et al., 2024)."""
from ..registry import register_router
from .config import MultilabelConfig

register_router("multilabel", MultilabelConfig, f"{__name__}.router:MultilabelRouter",
                summary="one multi-label MLP over all models (Srivatsa et al. 2024)")
