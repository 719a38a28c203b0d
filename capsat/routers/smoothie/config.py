"""Config of the smoothie router(s)."""
from __future__ import annotations

from dataclasses import dataclass

from data_builders.embeddings import DEFAULT_ENCODER

from ..base import EmbeddingConfig, help_field


@dataclass
class SmoothieGlobalConfig(EmbeddingConfig):
    encoder: str = help_field(DEFAULT_ENCODER, "sentence encoder for the candidates' outputs (and "
                                               "the queries, for LOCAL): the embedded "
                                               "all-MiniLM-L6-v2, a local path or a hub id")
    mode: str = help_field("transductive", "'transductive' (the paper): score queries from their "
                                           "own candidates' outputs, within the scored batch; "
                                           "'inductive': estimate on the training queries' "
                                           "outputs at fit (new queries need no outputs)")
    batch_size: int = help_field(1024, "queries per block of the distance computations "
                                       "(bounds memory)")


@dataclass
class SmoothieLocalConfig(SmoothieGlobalConfig):
    k: int = help_field(20, "nearest instructions (the query itself included) whose estimates "
                            "are averaged; fixed, as no label may choose it")
    bandwidth: float = help_field(0.0, "0: equal weights over the k neighbours (box kernel); "
                                       "> 0: Gaussian kernel exp(-dist^2 / (2 h^2)) on the "
                                       "cosine distance 1 - cos of the instructions")
