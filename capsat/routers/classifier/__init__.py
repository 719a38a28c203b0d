"""One classifier per model (Srivatsa et al., 2024, "Harnessing the power of multiple minds")."""
from ..registry import register_router
from .config import ClassifierConfig

register_router("classifier", ClassifierConfig, f"{__name__}.router:ClassifierRouter",
                summary="one logistic regression per model on the query embedding (Srivatsa "
                        "et al. 2024)")
