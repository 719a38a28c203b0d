"""Cluster router (Srivatsa et al., 2024, "Harnessing the power of multiple minds")."""
from ..registry import register_router
from .config import KMeansConfig

register_router("kmeans", KMeansConfig, f"{__name__}.router:KMeansRouter",
                summary="per-cluster mean scores of K-means clusters of queries (Srivatsa et "
                        "al. 2024)")
