"""Matrix-factorisation router in the style of EmbedLLM (Zhuang et al. 2024)."""
from ..registry import register_router
from .config import MatrixFactorisationConfig

register_router("mf", MatrixFactorisationConfig, f"{__name__}.router:MatrixFactorisationRouter",
                summary="matrix factorisation, EmbedLLM style")
