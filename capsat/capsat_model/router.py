"""CapSAT behind the Router interface, saved and loaded the Hugging Face way.

A saved CapSAT router is a folder (or a hub repo) holding:

- ``config.json``: the CapsatConfig (every field required on load);
- ``adapter/``: the LoRA adapter (peft: ``adapter_config.json`` + ``adapter_model.safetensors``),
  when the router reads through the LLM;
- ``heads.safetensors``: the capability encoder, connector and gate;
- ``evidence.safetensors``: the evidence bank (item embeddings and tasks, the training pool's
  scores, every candidate's outcomes on the items it has);
- ``registry.json``: candidates (kind, price, onboarding record, fitted IRT ability), the task
  order, the bank's item ids, the aptitude test and what training saw (``fitted_on``);
- ``aptitude_items.jsonl``: the aptitude test a new model takes (``capsat aptitude export``):
  id, task, question, choices, reference answer and grading rule of every core item;
- ``router.json``: the marker by which ``Router.load`` finds this class;
- ``README.md``: a model card with the evaluation table.

The base LLM is not copied: ``config.base_model`` names it (the embedded SmolLM2 by default).
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from huggingface_hub import ModelHubMixin, snapshot_download
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from data_builders.aptitude import AptitudeItem, AptitudeTest, read_aptitude_items
from data_builders.atomic import atomic_folder
from data_builders.embeddings import Embedder
from data_builders.errors import DataError

from ..hub import check_local
from ..routers.base import ROUTER_FILE, Queries, Router
from ..routers.provenance import Provenance
from .bank import EvidenceBank
from .config import CapsatConfig

#: The router shipped inside the package (``CapsatRouter.from_pretrained("default")``).
DEFAULT_ROUTER_DIR = Path(__file__).resolve().parent.parent / "default_router"
HEADS_FILE = "heads.safetensors"
EVIDENCE_FILE = "evidence.safetensors"
REGISTRY_FILE = "registry.json"
APTITUDE_FILE = "aptitude_items.jsonl"
ADAPTER_DIR = "adapter"
CANDIDATE_KINDS = ("trained", "onboarded")


class WeakAptitudeInput(UserWarning):
    """Onboarding from per-task accuracies: the per-item results are the stronger input."""


@dataclass
class Candidate:
    """One candidate as the router knows it."""

    name: str
    kind: str  # "trained" (its bank is its train outcomes) or "onboarded" (aptitude only)
    price: dict = field(default_factory=dict)
    onboarding: dict = field(default_factory=dict)  # what it was onboarded from
    fitted_ability: list | None = None  # IRT ability fitted on its evidence, item side frozen

    def to_json(self) -> dict:
        out = asdict(self)
        del out["name"]
        return out


class CapsatRouter(Router, ModelHubMixin, library_name="capsat", repo_url=None,
                   tags=["llm-router", "capsat"]):
    """CapSAT: a capability encoder reads each candidate's item-level evidence conditioned on
    the instruction; a LoRA-tuned small LLM reads the resulting soft tokens and answers Yes/No;
    P(Yes) (with the encoder's direct logit) is the success probability."""

    name = "capsat"
    config_class = CapsatConfig
    uses_embeddings = True
    can_onboard = True

    def __init__(self, config: CapsatConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        self.network = None
        self.tasks: list[str] = []
        self.candidates: dict[str, Candidate] = {}
        self.bank: EvidenceBank | None = None
        self.aptitude_items: list[AptitudeItem] = []
        #: A markdown table of the run that produced the router (shown in its model card).
        self.model_card_table: str = ""
        #: Score through the LLM (False: the encoder's direct logit; training sets it while
        #: the gate is still 0, when both agree).
        self.read_through_llm = True
        self._evidence = None
        #: Only these bank items are evidence (None: all): training validates known models as
        #: if onboarded from their aptitude answers.
        self.evidence_items: list[str] | None = None
        self._saving_without_llm = False  # set by save_pretrained(without_llm=True)

    # ---------------------------------------------------------------- build
    @classmethod
    def create(cls, config: CapsatConfig, bank: EvidenceBank, models: Sequence[str],
               tasks: Sequence[str], *, prices: Mapping[str, dict] | None = None,
               aptitude: AptitudeTest | None = None,
               aptitude_items: Sequence[AptitudeItem] = (), llm=None,
               tokenizer=None) -> "CapsatRouter":
        """A new, untrained router over the trained ``models`` (the bank's rows, in order);
        ``llm``/``tokenizer`` override loading ``config.base_model`` (tests pass a tiny one)."""
        if len(models) != bank.n_candidates:
            raise ValueError(f"{len(models)} models for a bank of {bank.n_candidates}")
        router = cls(config)
        router.tasks = list(tasks)
        router.bank = bank
        router.models = list(models)
        router.candidates = {m: Candidate(m, "trained", dict((prices or {}).get(m, {})))
                             for m in models}
        router.aptitude = aptitude
        router.aptitude_items = list(aptitude_items)
        router._build_network(llm, tokenizer)
        return router

    def _build_network(self, llm, tokenizer) -> None:
        from .model import CapsatNetwork

        if self.config.use_llm and llm is None:
            from .base_llm import load_base_llm

            llm, tokenizer = load_base_llm(self.config.base_model,
                                           quantization=self.config.quantization)
        self.network = CapsatNetwork(self.config, llm if self.config.use_llm else None,
                                     tokenizer, self.bank.embeddings.shape[1], len(self.tasks))

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    # ------------------------------------------------------------- routing
    def _fit(self, train, train_queries, validation, validation_queries):
        raise NotImplementedError("CapSAT is trained with `capsat train` (or `accelerate launch "
                                  "train`); evaluate a trained router as capsat:PATH")

    def embed(self, queries: Queries) -> np.ndarray:
        if queries.embeddings is not None:
            return queries.embeddings
        if self._embedder is None:
            self._embedder = Embedder(self.config.capability_encoder, progress=self.progress)
        return self._embedder.encode(queries.texts, desc="capsat: embedding queries")

    def evidence(self, rows: Sequence[int] | None = None):
        """The evidence of the candidates at ``rows`` (default all; ``config.max_evidence``
        items each at most), on the router's device; rebuilt after onboarding."""
        key = (None if rows is None else tuple(int(r) for r in rows),
               None if self.evidence_items is None else tuple(self.evidence_items))
        if self._evidence is None or self._evidence[0] != key:
            evidence = self.bank.evidence(
                None if rows is None else np.asarray(rows), max_items=self.config.max_evidence,
                items=self.evidence_items,
                n_tasks=len(self.tasks) if self.config.difficulty_k else None,
                difficulty_ridge=self.config.difficulty_ridge)
            self._evidence = (key, evidence.to(self.device))
        return self._evidence[1]

    def _predict(self, queries: Queries) -> np.ndarray:
        return self._predict_columns(queries, list(range(len(self.models))))

    def _predict_columns(self, queries: Queries, columns: list[int]) -> np.ndarray:
        """Only the asked candidates are read and packed: the LLM's cost grows with them."""
        network = self.network
        network.eval()
        device = self.device
        evidence = self.evidence(None if columns == list(range(len(self.models))) else columns)
        embeddings = torch.from_numpy(np.asarray(queries.embeddings, dtype=np.float32))
        known_tasks = self.task_indices(queries.tasks if self.config.read_task_labels
                                        else None, len(queries))
        through_llm = self.read_through_llm and network.llm is not None
        # Batches of instructions of similar length pad little: the LLM's cost is its tokens.
        order = (np.argsort([len(t) for t in queries.texts], kind="stable") if through_llm
                 else np.arange(len(queries)))
        out = np.zeros((len(queries), len(columns)))
        size = self.config.predict_batch_size if through_llm else 64
        starts = range(0, len(queries), size)
        with torch.no_grad():
            for start in tqdm(starts, desc="capsat: scoring", unit="batch",
                              disable=not self.progress or len(starts) < 8, leave=False):
                rows = order[start:start + size]
                batch = (network.pack_queries([queries.texts[i] for i in rows], len(columns))
                         if through_llm else None)
                result = network(embeddings[rows].to(device), evidence,
                                 None if batch is None else batch.to(device),
                                 known_tasks[rows].to(device))
                out[rows] = torch.sigmoid(result.logits).double().cpu().numpy()
        return out

    def task_labels(self) -> list[str] | None:
        return list(self.tasks) if self.config.read_task_labels else None

    def task_indices(self, tasks: Sequence[str | None] | None, n: int) -> torch.Tensor:
        """(n,) each query's task as an index into the router's tasks; -1 where it has no
        label or one the router does not know (the task head decides there)."""
        if tasks is None:
            return torch.full((n,), -1, dtype=torch.long)
        index = {t: i for i, t in enumerate(self.tasks)}
        return torch.tensor([index.get(t, -1) for t in tasks], dtype=torch.long)

    def irt_parameters(self, queries: Sequence[str]) -> dict[str, np.ndarray]:
        """The IRT side: per-candidate ability (M, D, from its evidence, centred over the
        candidates), per-query difficulty (n,) and discrimination (n, D)."""
        self.network.eval()
        embeddings = torch.from_numpy(self.embed(Queries(list(queries))).astype(np.float32))
        with torch.no_grad():
            encoder = self.network.encoder.to(self.device)
            discrimination, difficulty = encoder.item_parameters(embeddings.to(self.device))
            ability = encoder.abilities(self.evidence())
        return {"ability": ability.cpu().numpy(), "difficulty": difficulty.cpu().numpy(),
                "discrimination": discrimination.cpu().numpy()}

    # ----------------------------------------------------------- onboarding
    def takes_aptitude(self, aptitude: AptitudeTest) -> str | None:
        """Its own aptitude test; any other whose items are all in the bank, under scope
        "bank"."""
        if self.aptitude == aptitude:
            return "aptitude"
        return "bank" if set(aptitude.item_ids) <= set(self.bank.index) else None

    def check_onboarding(self, name, results, replace, scope: str = "aptitude"):
        """Per-item results on the router's aptitude items (``capsat aptitude export``), or
        with ``scope="bank"`` on any item of its evidence bank; per-task accuracies are
        accepted with a warning (the weaker input)."""
        if name in self.models and not replace:
            raise DataError(f"{name!r} is already a candidate; pass replace=True to update it",
                            field="name")
        if not isinstance(results, Mapping) or not results:
            raise DataError("aptitude results must map item ids (or tasks) to scores",
                            field="results")
        if set(results) <= set(self.tasks) and not set(results) & set(self.bank.index):
            return self._from_task_accuracies(results)
        out = {}
        for item, value in results.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                    or not 0.0 <= float(value) <= 1.0:
                raise DataError(f"score of {item!r} must be a number in [0, 1], got "
                                f"{value!r}", field="score")
            out[str(item)] = float(value)
        allowed = (self.bank.index if scope == "bank" or self.aptitude is None
                   else self.aptitude.item_ids)
        unknown = [q for q in out if q not in allowed]
        if unknown:
            raise DataError(f"{len(unknown)} result(s) are not on this router's aptitude items "
                            f"(`capsat aptitude export`), e.g. {unknown[:3]}",
                            field="results")
        return out

    def _from_task_accuracies(self, accuracy: Mapping[str, float]) -> dict[str, float]:
        """Per-task accuracies spread over the aptitude items of each task (graded)."""
        if self.aptitude is None:
            raise DataError("this router has no aptitude test to place per-task accuracies on",
                            field="results")
        missing = [t for t in self.aptitude.tasks if t not in accuracy]
        if missing:
            raise DataError(f"no accuracy for task(s) {missing}", field="task")
        warnings.warn("onboarding from per-task accuracies: the router reads them as graded "
                      "scores on its aptitude items; per-item results (`capsat aptitude run`) "
                      "describe a model better", WeakAptitudeInput, stacklevel=3)
        out = {}
        for task, ids in self.aptitude.items.items():
            value = accuracy[task]
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 <= float(value) <= 1.0:
                raise DataError(f"accuracy on {task!r} must be in [0, 1], got {value!r}",
                                field="task")
            out.update({q: float(value) for q in ids})
        return out

    def onboard(self, name: str, results: Mapping[str, float], *, price: dict | None = None,
                replace: bool = False, scope: str = "aptitude") -> Candidate:
        """Add a model from its aptitude results alone (item id -> score; no retraining)."""
        from_tasks = set(results) <= set(self.tasks)
        items = self.check_onboarding(name, results, replace, scope)
        candidate = Candidate(name, "onboarded", dict(price or {}),
                              {"items": len(items),
                               "source": "task accuracies" if from_tasks else "item results"})
        if name in self.models:
            self.bank.replace(self.models.index(name), items)
        else:
            self.bank.add(items)
            self.models.append(name)
        self.candidates[name] = candidate
        self._evidence = None
        candidate.fitted_ability = self.fit_ability(items).tolist()
        return candidate

    def evidence_results(self, name: str) -> dict[str, float]:
        """item id -> score: the evidence ``name`` is described by (its bank)."""
        row = self.bank.outcomes[self.models.index(name)]
        return {q: float(row[i]) for i, q in enumerate(self.bank.item_ids) if row[i] == row[i]}

    def fit_ability(self, results: Mapping[str, float], steps: int = 200) -> np.ndarray:
        """The IRT ability that best explains ``results`` (item -> score) with the item side
        (discrimination, difficulty from the items' embeddings) frozen: onboarding's own
        estimate, reported by ``capsat explain`` beside the encoder's."""
        ids = list(results)
        rows = [self.bank.index[q] for q in ids]
        x = torch.from_numpy(self.bank.embeddings[rows].astype(np.float32)).to(self.device)
        y = torch.tensor([results[q] for q in ids], dtype=torch.float32, device=self.device)
        encoder = self.network.encoder
        with torch.no_grad():
            a, b = encoder.item_parameters(x)
        theta = torch.zeros(a.shape[1], device=self.device, requires_grad=True)
        optimiser = torch.optim.LBFGS([theta], max_iter=steps)

        def closure():
            optimiser.zero_grad()
            logits = a @ theta - b
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) \
                + 1e-2 * (theta ** 2).sum()  # a weak prior keeps it finite on all-right tests
            loss.backward()
            return loss

        optimiser.step(closure)
        return theta.detach().cpu().numpy().astype(float)

    # ------------------------------------------------------ save / load
    def state_json(self) -> dict:
        return {}

    def save(self, directory: str | os.PathLike) -> Path:
        self.save_pretrained(directory)
        return Path(directory)

    def save_pretrained(self, save_directory, *, push_to_hub: bool = False,
                        repo_id: str | None = None, without_llm: bool = False, **kwargs):
        """Write the router folder atomically: the mixin writes into a temporary sibling,
        which replaces ``save_directory`` only when complete, so the old router stays loadable
        through a crash (the mixin itself deletes ``config.json`` before it writes).

        ``without_llm``: save the encoder alone (``use_llm: false``, no adapter). Only while
        the gate is exactly 0, when the LLM adds nothing to any probability: the saved router
        scores the same without loading or running the LLM."""
        if self.network is None:
            raise RuntimeError("cannot save a CapSAT router without a network")
        if without_llm and self.network.llm is not None and not self.llm_adds_nothing:
            raise ValueError(f"without_llm: the gate is {float(self.network.gate.detach()):.4g}, "
                             f"so the LLM moves every probability; saving without it would "
                             f"change the router")
        target = Path(save_directory)
        self._saving_without_llm = without_llm
        try:
            with atomic_folder(target) as tmp:
                super().save_pretrained(tmp, **kwargs)
        finally:
            self._saving_without_llm = False
        if push_to_hub:
            return self.push_to_hub(repo_id or target.name)
        return None

    @property
    def llm_adds_nothing(self) -> bool:
        """Whether the router has an LLM whose gate is exactly 0 (an LLM stage never trained,
        or not kept by validation): then every probability is the encoder's alone."""
        return self.network is not None and self.network.llm is not None and \
            float(self.network.gate.detach()) == 0.0

    def _saved_config(self) -> CapsatConfig:
        if self._saving_without_llm:
            return dataclasses.replace(self.config, use_llm=False)
        return self.config

    def _save_pretrained(self, save_directory: Path) -> None:
        """The folder's files (the mixin calls this with the temporary folder)."""
        tmp = Path(save_directory)
        config = self._saved_config()
        (tmp / "config.json").write_text(json.dumps(
            {"router": self.name, **config.to_dict()}, indent=2))
        state = self.network.trainable_state()
        if not config.use_llm:  # the encoder's parts alone
            state = {k: v for k, v in state.items() if k.split(".", 1)[0] == "encoder"}
        else:
            self.network.llm.save_pretrained(str(tmp / ADAPTER_DIR), safe_serialization=True)
            # peft records where the base was loaded from (a local cache path): name it.
            adapter_config = tmp / ADAPTER_DIR / "adapter_config.json"
            values = json.loads(adapter_config.read_text())
            values["base_model_name_or_path"] = self.config.base_model
            adapter_config.write_text(json.dumps(values, indent=2))
        save_file({k: v for k, v in state.items() if not k.startswith("lora.")},
                  str(tmp / HEADS_FILE))
        save_file({k: v.contiguous() for k, v in self.bank.arrays().items()},
                  str(tmp / EVIDENCE_FILE))
        registry = {"models": self.models, "tasks": self.tasks,
                    "candidates": {m: self.candidates[m].to_json() for m in self.models},
                    "item_ids": self.bank.item_ids,
                    "aptitude": None if self.aptitude is None else self.aptitude.to_json(),
                    "fitted_on": (None if self.fitted_on is None
                                  else self.fitted_on.to_json())}
        (tmp / REGISTRY_FILE).write_text(json.dumps(registry, indent=1))
        with open(tmp / APTITUDE_FILE, "w", encoding="utf-8") as fh:
            for item in self.aptitude_items:
                fh.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
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
        registry_path = directory / REGISTRY_FILE
        registry = json.loads(registry_path.read_text())
        for key in ("models", "tasks", "candidates", "item_ids", "aptitude", "fitted_on"):
            if key not in registry:
                raise DataError("missing key", file=str(registry_path), field=key)
        router = cls(config)
        router.tasks = list(registry["tasks"])
        router.models = list(registry["models"])
        router.candidates = {m: Candidate(m, **registry["candidates"][m])
                             for m in registry["models"]}
        router.fitted_on = Provenance.from_json(registry["fitted_on"], file=str(registry_path))
        if registry["aptitude"] is not None:
            router.aptitude = AptitudeTest.from_json(registry["aptitude"],
                                                     file=str(registry_path))
        router.aptitude_items = read_aptitude_items(directory / APTITUDE_FILE)
        router.bank = EvidenceBank.from_arrays(registry["item_ids"],
                                               load_file(str(directory / EVIDENCE_FILE)),
                                               file=str(directory / EVIDENCE_FILE))
        if router.bank.n_candidates != len(router.models):
            raise DataError(f"the evidence bank holds {router.bank.n_candidates} candidates, "
                            f"the registry {len(router.models)}", file=str(registry_path))
        router._build_network(llm, tokenizer)
        state = load_file(str(directory / HEADS_FILE))
        if config.use_llm:
            from peft import load_peft_weights

            lora = load_peft_weights(str(directory / ADAPTER_DIR), device="cpu")
            state.update({f"lora.{k}": v for k, v in lora.items()})
        router.network.load_trainable_state(state)
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
        saved_with_llm = self._saved_config().use_llm
        reading = (f"a LoRA-tuned `{self.config.base_model}` (r={self.config.lora_r} on "
                   f"{', '.join(self.network.lora_targets)}) reads {self.config.n_soft_tokens} "
                   f"soft tokens per candidate" if saved_with_llm
                   else "the capability encoder's direct logit alone (no LLM)")
        if saved_with_llm != self.config.use_llm:
            reading += (f"; it was trained with `{self.config.base_model}`, whose gate stayed "
                        f"0, so the LLM added nothing and is not saved")
        trained = [m for m in self.models if self.candidates[m].kind == "trained"]
        onboarded = [m for m in self.models if self.candidates[m].kind == "onboarded"]
        lines = ["---", "library_name: capsat", "tags: [llm-router, capsat]", "---", "",
                 "# CapSAT router", "",
                 f"Capability from item-level evidence ({len(self.bank.item_ids)} items, "
                 f"encoder `{self.config.capability_encoder}`); {reading}.", "",
                 f"Candidates trained on ({len(trained)}): {', '.join(trained)}.", ""]
        if onboarded:
            lines += [f"Onboarded from their aptitude test ({len(onboarded)}): "
                      f"{', '.join(onboarded)}.", ""]
        lines += [f"Aptitude test: {len(self.aptitude_items)} items "
                  f"(`capsat aptitude export`).", "",
                  "Load with `CapsatRouter.from_pretrained(path_or_hub_id)` or "
                  "`capsat eval --routers capsat:PATH`.", ""]
        if self.model_card_table:
            lines += ["## Evaluation", "", self.model_card_table, ""]
        return "\n".join(lines)
