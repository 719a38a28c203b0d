"""kNN correctness predictor (Shnitzer et al., 2023)."""
from ..registry import register_router
from .config import KnnConfig

register_router("knn", KnnConfig, f"{__name__}.router:KnnRouter",
                summary="mean score of the k most similar training queries (Shnitzer et al. "
                        "2023)")
