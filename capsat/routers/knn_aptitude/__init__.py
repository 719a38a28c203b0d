"""kNN correctness over the aptitude items only (onboards new models)."""
from ..registry import register_router
from .config import KnnAptitudeConfig

register_router("knn_aptitude", KnnAptitudeConfig, f"{__name__}.router:KnnAptitudeRouter",
                summary="mean score of the k most similar aptitude items (onboards new models "
                        "from their aptitude test)")
