"""Item-response-theory router in the style of IrtNet."""
from ..registry import register_router
from .config import IrtConfig

register_router("irt", IrtConfig, f"{__name__}.router:IrtRouter",
                summary="IrtNet-style IRT: mixture-of-experts difficulty and discrimination, "
                        "learned model abilities")
