"""CapSAT behind the Router interface, saved and loaded the Hugging Face way.

A saved CapSAT router is a folder (or a hub repo) holding:

- ``config.json``: the CapsatConfig (every field required on load);
- ``adapter/``: the LoRA adapter (peft: ``adapter_config.json`` + ``adapter_model.safetensors``);
- ``heads.safetensors``: connector and IRT heads, and the candidates' capability features;
- ``registry.json``: each candidate's aptitude results, representation and price, the task
  order and keywords used to describe new models;
- ``router.json``: the marker by which ``Router.load`` finds this class;
- ``README.md``: a model card with the evaluation table.

The base LLM is not copied: ``config.base_model`` names it (the embedded SmolLM2 by default).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from huggingface_hub import ModelHubMixin, snapshot_download
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from data_builders.aptitude import render_representation
from data_builders.atomic import atomic_folder
from data_builders.embeddings import Embedder
from data_builders.errors import DataError

from ..hub import check_local
from ..routers.base import ROUTER_FILE, Queries, Router
from ..routers.provenance import Provenance
from .config import CapsatConfig

#: The router shipped inside the package (``CapsatRouter.from_pretrained("default")``).
DEFAULT_ROUTER_DIR = Path(__file__).resolve().parent.parent / "default_router"
HEADS_FILE = "heads.safetensors"
REGISTRY_FILE = "registry.json"
ADAPTER_DIR = "adapter"


@dataclass
class Candidate:
    """One candidate model as the router knows it: from its aptitude-test results alone."""

    name: str
    aptitude: dict[str, float]
    representation: str
    price: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"aptitude": self.aptitude, "representation": self.representation,
                "price": self.price}


class CapsatRouter(Router, ModelHubMixin, library_name="capsat", repo_url=None,
                   tags=["llm-router", "capsat"]):
    """CapSAT: a LoRA-tuned small LLM reads each candidate's capability soft tokens and the
    instruction and answers Yes/No; P(Yes) is the success probability."""

    name = "capsat"
    config_class = CapsatConfig

    def __init__(self, config: CapsatConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        self.network = None
        self.tasks: list[str] = []
        self.keywords: dict[str, str] = {}
        self.candidates: dict[str, Candidate] = {}
        self.features: torch.Tensor | None = None
        #: A markdown table of the run that produced the router (shown in its model card).
        self.model_card_table: str = ""

    # ---------------------------------------------------------------- build
    @classmethod
    def create(cls, config: CapsatConfig, candidates: Sequence[Candidate], tasks: Sequence[str],
               keywords: Mapping[str, str], *, llm=None, tokenizer=None) -> "CapsatRouter":
        """A new, untrained router over ``candidates``; ``llm``/``tokenizer`` override loading
        ``config.base_model`` (tests pass a tiny model)."""
        from .base_llm import load_base_llm
        from .model import CapsatNetwork

        router = cls(config)
        router.tasks = list(tasks)
        router.keywords = dict(keywords)
        for candidate in candidates:
            router._check_aptitude(candidate)
        router.candidates = {c.name: c for c in candidates}
        router.models = [c.name for c in candidates]
        router.features = router._features(candidates)
        if llm is None:
            llm, tokenizer = load_base_llm(config.base_model)
        router.network = CapsatNetwork(config, llm, tokenizer, router.features.shape[1])
        return router

    def _check_aptitude(self, candidate: Candidate) -> None:
        missing = [t for t in self.tasks if t not in candidate.aptitude]
        if missing:
            raise DataError(f"candidate {candidate.name!r} has no aptitude result for task(s) "
                            f"{missing}", field="aptitude")

    def _features(self, candidates: Sequence[Candidate]) -> torch.Tensor:
        """Capability features: encoded representation (+ aptitude vector in task order)."""
        encoded = Embedder(self.config.capability_encoder, progress=False).encode(
            [c.representation for c in candidates])
        parts = [encoded]
        if self.config.use_aptitude_vector:
            parts.append(np.array([[c.aptitude[t] for t in self.tasks] for c in candidates],
                                  dtype=np.float32))
        return torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))

    # ------------------------------------------------------------- routing
    def _fit(self, train, train_queries, validation, validation_queries):
        raise NotImplementedError("CapSAT is trained with `capsat train` (or `accelerate launch "
                                  "train`); evaluate a trained router as capsat:PATH")

    def _predict(self, queries: Queries) -> np.ndarray:
        network = self.network
        network.eval()
        device = next(network.parameters()).device
        features = self.features.to(device)
        out = []
        size = self.config.predict_batch_size
        starts = range(0, len(queries), size)
        with torch.no_grad():
            for start in tqdm(starts, desc="capsat: scoring", unit="batch",
                              disable=not self.progress or len(starts) < 8, leave=False):
                batch = network.pack_queries(queries.texts[start:start + size],
                                             len(self.models)).to(device)
                out.append(torch.sigmoid(network(batch, features).logits).double().cpu())
        return torch.cat(out).numpy()

    def irt_parameters(self, queries: Sequence[str]) -> dict[str, np.ndarray]:
        """Learned IRT parameters: per-model ability (M, D), per-query difficulty (n,) and
        discrimination (n, D)."""
        network = self.network
        network.eval()
        device = next(network.parameters()).device
        features = self.features.to(device)
        difficulty, discrimination = [], []
        ability = None
        with torch.no_grad():
            for start in range(0, len(queries), self.config.predict_batch_size):
                texts = list(queries[start:start + self.config.predict_batch_size])
                out = network(network.pack_queries(texts, len(self.models)).to(device), features)
                difficulty.append(out.difficulty.cpu())
                discrimination.append(out.discrimination.cpu())
                ability = out.ability.cpu()
        return {"ability": ability.numpy(), "difficulty": torch.cat(difficulty).numpy(),
                "discrimination": torch.cat(discrimination).numpy()}

    # ----------------------------------------------------------- onboarding
    def onboard(self, name: str, aptitude: Mapping[str, float], price: dict | None = None,
                replace: bool = False) -> Candidate:
        """Add a model from its aptitude-test results alone (no retraining)."""
        if name in self.candidates and not replace:
            raise ValueError(f"{name!r} is already a candidate; pass replace=True to update it")
        unknown = sorted(set(aptitude) - set(self.tasks))
        if unknown:
            raise DataError(f"aptitude results for unknown task(s) {unknown}; the router's "
                            f"tasks are {self.tasks}", field="aptitude")
        aptitude = {t: float(aptitude[t]) for t in self.tasks if t in aptitude}
        candidate = Candidate(name, aptitude, render_representation(aptitude, self.keywords),
                              dict(price or {}))
        self._check_aptitude(candidate)
        feature = self._features([candidate])
        if name in self.candidates:
            self.features[self.models.index(name)] = feature[0]
        else:
            self.models.append(name)
            self.features = torch.cat([self.features, feature])
        self.candidates[name] = candidate
        return candidate

    # ------------------------------------------------------ save / load
    def state_json(self) -> dict:
        return {}

    def save(self, directory: str | os.PathLike) -> Path:
        self.save_pretrained(directory)
        return Path(directory)

    def save_pretrained(self, save_directory, *, push_to_hub: bool = False,
                        repo_id: str | None = None, **kwargs):
        """Write the router folder atomically: the mixin writes into a temporary sibling,
        which replaces ``save_directory`` only when complete, so the old router stays loadable
        through a crash (the mixin itself deletes ``config.json`` before it writes)."""
        if self.network is None:
            raise RuntimeError("cannot save a CapSAT router without a network")
        target = Path(save_directory)
        with atomic_folder(target) as tmp:
            super().save_pretrained(tmp, **kwargs)
        if push_to_hub:
            return self.push_to_hub(repo_id or target.name)
        return None

    def _save_pretrained(self, save_directory: Path) -> None:
        """The folder's files (the mixin calls this with the temporary folder)."""
        tmp = Path(save_directory)
        (tmp / "config.json").write_text(json.dumps(
            {"router": self.name, **self.config.to_dict()}, indent=2))
        self.network.llm.save_pretrained(str(tmp / ADAPTER_DIR), safe_serialization=True)
        # peft records where the base was loaded from (a local cache path): name it instead.
        adapter_config = tmp / ADAPTER_DIR / "adapter_config.json"
        values = json.loads(adapter_config.read_text())
        values["base_model_name_or_path"] = self.config.base_model
        adapter_config.write_text(json.dumps(values, indent=2))
        heads = {k: v for k, v in self.network.trainable_state().items()
                 if not k.startswith("lora.")}
        heads["capability_features"] = self.features.contiguous()
        save_file(heads, str(tmp / HEADS_FILE))
        registry = {"models": self.models, "tasks": self.tasks, "keywords": self.keywords,
                    "candidates": {m: self.candidates[m].to_json() for m in self.models},
                    "fitted_on": (None if self.fitted_on is None
                                  else self.fitted_on.to_json())}
        (tmp / REGISTRY_FILE).write_text(json.dumps(registry, indent=2))
        (tmp / ROUTER_FILE).write_text(json.dumps({"router": self.name,
                                                   "format": "huggingface"}))
        (tmp / "README.md").write_text(self.model_card())

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None,
                         cache_dir=None, force_download: bool = False,
                         local_files_only: bool = False, token=None, llm=None, tokenizer=None,
                         device: str = "auto", **kwargs) -> "CapsatRouter":
        directory = Path(model_id)
        if not directory.is_dir():
            directory = Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir,
                                               force_download=force_download, token=token,
                                               local_files_only=local_files_only))
        config_path = directory / "config.json"
        if not config_path.exists():
            raise DataError("not a saved CapSAT router (no config.json)", file=str(directory))
        values = json.loads(config_path.read_text())
        if values.pop("router", None) != cls.name:
            raise DataError("config.json is not a CapSAT router's", file=str(config_path),
                            field="router")
        config = CapsatConfig.from_dict(values)
        registry = json.loads((directory / REGISTRY_FILE).read_text())
        for key in ("models", "tasks", "keywords", "candidates", "fitted_on"):
            if key not in registry:
                raise DataError("missing key", file=str(directory / REGISTRY_FILE), field=key)
        candidates = [Candidate(m, **registry["candidates"][m]) for m in registry["models"]]
        heads = load_file(str(directory / HEADS_FILE))
        features = heads.pop("capability_features")

        from peft import load_peft_weights

        from .base_llm import load_base_llm
        from .model import CapsatNetwork

        router = cls(config)
        router.tasks, router.keywords = registry["tasks"], registry["keywords"]
        router.fitted_on = Provenance.from_json(registry["fitted_on"],
                                                file=str(directory / REGISTRY_FILE))
        router.candidates = {c.name: c for c in candidates}
        router.models = [c.name for c in candidates]
        router.features = features
        if llm is None:
            llm, tokenizer = load_base_llm(config.base_model)
        router.network = CapsatNetwork(config, llm, tokenizer, features.shape[1])
        lora = load_peft_weights(str(directory / ADAPTER_DIR), device="cpu")
        router.network.load_trainable_state({**{f"lora.{k}": v for k, v in lora.items()},
                                             **heads})
        router.network.eval()
        if device == "auto":  # scoring is a forward pass of the LLM: use the GPU when there is one
            device = "cuda" if torch.cuda.is_available() else "cpu"
        router.network.to(device)
        return router

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "CapsatRouter":
        """A saved folder, a hub id, or "default" (the router shipped in the package)."""
        check_local(str(pretrained_model_name_or_path))
        if str(pretrained_model_name_or_path) == "default":
            if not (DEFAULT_ROUTER_DIR / "config.json").exists():
                raise DataError("no default CapSAT router is shipped in this version; train "
                                "one with `capsat train`", file=str(DEFAULT_ROUTER_DIR))
            pretrained_model_name_or_path = DEFAULT_ROUTER_DIR
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def load(cls, directory: str | os.PathLike, **kwargs) -> "CapsatRouter":
        return cls.from_pretrained(str(directory), **kwargs)

    # ------------------------------------------------------------ model card
    def model_card(self) -> str:
        lines = ["---", "library_name: capsat", "tags: [llm-router, capsat]", "---", "",
                 "# CapSAT router", "",
                 f"Base LLM: `{self.config.base_model}` with LoRA (r={self.config.lora_r}) on "
                 f"{', '.join(self.network.lora_targets)}; capability encoder "
                 f"`{self.config.capability_encoder}`; {self.config.n_soft_tokens} soft tokens "
                 f"per candidate.", "",
                 f"Candidates ({len(self.models)}): {', '.join(self.models)}.", "",
                 "Load with `CapsatRouter.from_pretrained(path_or_hub_id)` or "
                 "`capsat eval --routers capsat:PATH`.", ""]
        if self.model_card_table:
            lines += ["## Evaluation", "", self.model_card_table, ""]
        return "\n".join(lines)
