"""SMOOTHIE: label-free routing from the candidates' own outputs (Guha et al., NeurIPS 2024)."""
from ..registry import register_router
from .config import SmoothieGlobalConfig, SmoothieLocalConfig

register_router("smoothie_global", SmoothieGlobalConfig,
                f"{__name__}.router:SmoothieGlobalRouter",
                summary="label-free SMOOTHIE: one quality score per candidate and task from the "
                        "candidates' outputs")
register_router("smoothie_local", SmoothieLocalConfig, f"{__name__}.router:SmoothieLocalRouter",
                summary="label-free SMOOTHIE: per-query quality scores from the candidates' "
                        "outputs")
