"""The one router interface: fit on outcomes, score (query, model) pairs, route.

Every router, classic or CapSAT, implements ``predict_proba``: an (n_queries x n_models)
matrix of success probabilities. Routing, evaluation and the cost-aware policies are built on
that single method. Checkpoints are a directory with ``router.json`` (name, config, models,
JSON state) and ``state.safetensors`` (arrays): no pickle.
"""
from __future__ import annotations

import dataclasses
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from data_builders.aptitude import AptitudeTest, check_item_results
from data_builders.atomic import atomic_folder
from data_builders.embeddings import DEFAULT_ENCODER, Embedder
from data_builders.errors import DataError
from data_builders.outcomes import OutcomeTable

from .provenance import Provenance

ROUTER_FILE = "router.json"
STATE_FILE = "state.safetensors"


@dataclass
class RouterConfig:
    """Base of every router config. Fields carry their help text in ``metadata['help']``."""

    #: Fields added after routers of this kind were first saved, each with the value that
    #: reproduces exactly how a router saved before it behaves (not today's default): a saved
    #: config that lacks one gets that value; any other missing field is an error.
    behaviour_before: ClassVar[dict] = {}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, strict: bool = True) -> "RouterConfig":
        """Build from a dict. ``strict``: every field must be present (a saved config that lacks
        one is an error, never silently filled with today's default), except the fields in
        ``behaviour_before``, which take the value older routers behave by."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise DataError(f"{cls.__name__}: unknown field(s) {unknown}; known: "
                            f"{sorted(names)}", field=unknown[0])
        values = {**{k: v for k, v in cls.behaviour_before.items() if k not in values},
                  **values}
        missing = sorted(names - set(values))
        if strict and missing:
            raise DataError(f"{cls.__name__}: missing field(s) {missing}", field=missing[0])
        return cls(**values)

    @classmethod
    def parse_option(cls, name: str, text: str):
        """The value of field ``name`` from command-line text (JSON, or a bare string for text
        fields), checked against the field's type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if name not in fields:
            raise DataError(f"no option {name!r}; options: {sorted(fields)}", field=name)
        kind = str(fields[name].type).replace(" ", "")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if kind.startswith("str") and not isinstance(value, str):
            value = text
        ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": lambda v: isinstance(v, bool),
              "list": lambda v: isinstance(v, list)}
        check = ok.get(kind.split("|")[0])
        if check is not None and not check(value):
            raise DataError(f"{name} takes a {kind} (JSON), got {text!r}", field=name)
        return float(value) if kind == "float" else value

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls) -> dict:
        """Every field's default value (list fields included, which use a factory)."""
        return dataclasses.asdict(cls())


def help_field(default, help: str, **kwargs):
    """A dataclass field with help text (shown by ``capsat ls``)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help},
                     **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class EmbeddingConfig(RouterConfig):
    """Base config of routers that read query embeddings."""

    encoder: str = help_field(DEFAULT_ENCODER, "sentence encoder for queries: the embedded "
                                               "all-MiniLM-L6-v2, a local path or a hub id")


@dataclass
class Queries:
    """A batch of instructions to score. ``embeddings`` may be precomputed (rows aligned).

    ``responses`` optionally holds the candidates' own outputs for these instructions (what
    label-free routers such as SMOOTHIE score): model name -> one text per query (None where
    that model has no output). A query x model DataFrame is accepted too.
    """

    texts: list[str]
    ids: list[str] | None = None
    tasks: list[str] | None = None
    embeddings: np.ndarray | None = None
    responses: dict[str, list[str | None]] | None = None

    def __post_init__(self):
        if isinstance(self.texts, str):
            raise TypeError("Queries.texts must be a list of strings, not one string")
        self.texts = list(self.texts)
        for name in ("ids", "tasks"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.texts):
                raise ValueError(f"Queries.{name} has {len(values)} entries for "
                                 f"{len(self.texts)} texts")
        if self.embeddings is not None and len(self.embeddings) != len(self.texts):
            raise ValueError("Queries.embeddings rows must match texts")
        if self.responses is not None:
            self.responses = _response_columns(self.responses, len(self.texts))

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_table(cls, table: OutcomeTable, embeddings: np.ndarray | None = None) -> "Queries":
        return cls(table.texts, table.query_ids, table.tasks, embeddings, table.responses)


def _response_columns(responses, n_queries: int) -> dict[str, list[str | None]]:
    """Model -> list of n_queries texts (None = no output), from a mapping or a DataFrame."""
    if isinstance(responses, str) or not hasattr(responses, "items"):
        raise TypeError("Queries.responses maps model names to one text per query "
                        f"(or is a query x model DataFrame), got {type(responses).__name__}")
    columns = {}
    for model, texts in responses.items():
        if isinstance(texts, str):
            raise TypeError(f"Queries.responses[{model!r}] must be a list of texts, not one "
                            f"string")
        texts = [None if text is None or (isinstance(text, float) and np.isnan(text)) else text
                 for text in texts]
        if len(texts) != n_queries:
            raise ValueError(f"Queries.responses[{model!r}] has {len(texts)} entries for "
                             f"{n_queries} texts")
        columns[str(model)] = texts
    return columns


QueriesLike = Queries | Sequence[str] | OutcomeTable


def as_queries(queries: QueriesLike) -> Queries:
    if isinstance(queries, Queries):
        return queries
    if isinstance(queries, OutcomeTable):
        return Queries.from_table(queries)
    if isinstance(queries, str):
        raise TypeError("queries must be a list of texts, not one string")
    return Queries(list(queries))


class Router(ABC):
    """Predicts, for each query and candidate model, the probability of a correct answer.

    Subclasses set ``name`` and ``config_class`` and implement ``_fit`` and ``_predict``;
    routers with learned state also implement ``state_arrays`` / ``load_state_arrays`` (numpy
    arrays, stored as safetensors) and may add JSON-able state via ``state_json``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[RouterConfig]] = RouterConfig
    #: Whether predict_proba needs query embeddings (then ``config.encoder`` names the encoder).
    uses_embeddings: ClassVar[bool] = False
    #: True for routers that read the labels of the very queries they score (the oracle).
    cheats: ClassVar[bool] = False
    #: True for routers whose fit never reads outcome scores (SMOOTHIE): they need no labels.
    label_free: ClassVar[bool] = False
    #: True for routers that read the candidates' own responses (SMOOTHIE).
    needs_responses: ClassVar[bool] = False
    #: True for routers that add a new candidate from its aptitude-test results alone
    #: (``onboard``); they are fitted with the experiment's aptitude test.
    can_onboard: ClassVar[bool] = False

    def task_labels(self) -> list[str] | None:
        """The task labels this router reads from ``Queries.tasks`` (a query with another
        label, or none, is routed from its text alone); None if it ignores them."""
        return None

    def __init__(self, config: RouterConfig | None = None, **overrides):
        if config is None:
            config = self.config_class(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config
        self.models: list[str] = []
        #: What the router was fitted on (``provenance.Provenance``); None = unknown.
        self.fitted_on: Provenance | None = None
        #: The aptitude test new models are onboarded with (routers with ``can_onboard``).
        self.aptitude: AptitudeTest | None = None
        self._embedder: Embedder | None = None
        #: Show progress bars for long work (embedding, scoring); a batch job may turn them off.
        self.progress = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    # ------------------------------------------------------------ training
    def fit(self, train: OutcomeTable, validation: OutcomeTable | None = None,
            embeddings: dict[str, np.ndarray] | None = None, *, split: str | None = None,
            seed: int | None = None, aptitude: AptitudeTest | None = None) -> "Router":
        """Fit on ``train``; choose hyper-parameters / stop early on ``validation`` only.

        ``embeddings`` optionally maps "train"/"validation" to precomputed query embeddings.
        ``split`` / ``seed`` name the split the tables come from, for the router's record of
        what it was fitted on (``fitted_on``, saved with it). ``aptitude``: the experiment's
        aptitude test (its core items are train queries), which routers that onboard new
        models need.
        """
        if validation is not None and validation.models != train.models:
            raise ValueError("train and validation must have the same models")
        if self.can_onboard and aptitude is None:
            raise DataError(f"{self.name} onboards new models from their aptitude-test results: "
                            f"fit it with the experiment's aptitude test", field="aptitude")
        self.aptitude = aptitude
        self.models = list(train.models)
        embeddings = embeddings or {}
        train_q = Queries.from_table(train, embeddings.get("train"))
        val_q = None if validation is None else Queries.from_table(
            validation, embeddings.get("validation"))
        if self.uses_embeddings:
            train_q.embeddings = self.embed(train_q)
            if val_q is not None:
                val_q.embeddings = self.embed(val_q)
        self._fit(train, train_q, validation, val_q)
        self.fitted_on = Provenance.from_tables(train, validation, split=split, seed=seed)
        return self

    @abstractmethod
    def _fit(self, train: OutcomeTable, train_queries: Queries,
             validation: OutcomeTable | None, validation_queries: Queries | None) -> None:
        ...

    # ------------------------------------------------------------- scoring
    def predict_proba(self, queries: QueriesLike, models: Sequence[str] | None = None
                      ) -> np.ndarray:
        """(n_queries x n_models) success probabilities, columns in the order of ``models``
        (default: every model the router knows)."""
        if not self.models:
            raise RuntimeError(f"{self.name} router is not fitted")
        queries = as_queries(queries)
        columns = self._columns(models)
        if len(queries) == 0:
            return np.zeros((0, len(columns)))
        if self.uses_embeddings and queries.embeddings is None:
            queries.embeddings = self.embed(queries)
        probs = np.asarray(self._predict_columns(queries, columns), dtype=float)
        if probs.shape != (len(queries), len(columns)):
            raise RuntimeError(f"{self.name}: predicted shape {probs.shape}, expected "
                               f"{(len(queries), len(columns))}")
        return np.clip(probs, 0.0, 1.0)

    @abstractmethod
    def _predict(self, queries: Queries) -> np.ndarray:
        """(n_queries x len(self.models)) probabilities."""

    def _predict_columns(self, queries: Queries, columns: list[int]) -> np.ndarray:
        """The probabilities of the candidates at ``columns`` only; a router whose cost grows
        with the candidates (CapSAT) scores just those."""
        probs = np.asarray(self._predict(queries), dtype=float)
        if probs.shape != (len(queries), len(self.models)):
            raise RuntimeError(f"{self.name}: _predict returned shape {probs.shape}, expected "
                               f"{(len(queries), len(self.models))}")
        return probs[:, columns]

    def _columns(self, models: Sequence[str] | None) -> list[int]:
        if models is None:
            return list(range(len(self.models)))
        if isinstance(models, str):
            raise TypeError("models must be a list of names, not one string")
        unknown = [m for m in models if m not in self.models]
        if unknown:
            raise DataError(f"{self.name} router does not know model(s) {unknown}; "
                            f"it knows {self.models}", field="model")
        return [self.models.index(m) for m in models]

    # ----------------------------------------------------------- onboarding
    def onboard(self, name: str, results: Mapping[str, float], *, price: dict | None = None,
                replace: bool = False, scope: str = "aptitude") -> None:
        """Add the model ``name`` from its scores on the aptitude test's core items alone
        (``results``: item id -> score in [0, 1]); only routers with ``can_onboard``.
        ``scope="bank"`` (CapSAT) accepts results on any item the router holds evidence
        slots for (an experiment with another aptitude test than the router's own)."""
        raise NotImplementedError(f"{self.name} cannot onboard a new model: it knows only the "
                                  f"models it was fitted on")

    def takes_aptitude(self, aptitude: AptitudeTest) -> str | None:
        """The onboarding ``scope`` under which results on ``aptitude``'s core items onboard
        a model here (None: they cannot)."""
        return "aptitude" if self.aptitude == aptitude else None

    def check_onboarding(self, name: str, results: Mapping[str, float], replace: bool,
                         scope: str = "aptitude") -> dict[str, float]:
        """The results as floats, checked: every key a core item, every task answered, scores
        in [0, 1], and ``name`` new unless ``replace``."""
        if scope != "aptitude":
            raise DataError(f"{self.name} onboards from its own aptitude test only",
                            field="scope")
        if name in self.models and not replace:
            raise DataError(f"{name!r} is already a candidate; replace it explicitly",
                            field="name")
        return check_item_results(self.aptitude, results)

    def _with_model_row(self, matrix: np.ndarray, name: str, row: np.ndarray) -> np.ndarray:
        """``matrix`` (models x ...) with ``name``'s row set: replaced if it is a candidate,
        else appended (and ``name`` added to the candidates)."""
        if name in self.models:
            matrix[self.models.index(name)] = row
            return matrix
        self.models.append(name)
        return np.vstack([matrix, row])

    def route(self, queries: QueriesLike, candidates: Sequence[str] | None = None,
              costs: dict[str, float] | Sequence[float] | np.ndarray | None = None,
              willingness_to_pay: float = 0.0) -> list[str]:
        """Pick one candidate per query: argmax of P(correct) - willingness_to_pay * cost.

        ``costs``: per-model cost (a dict by name, or a vector aligned with ``candidates``),
        or an (n_queries x n_candidates) matrix.
        """
        candidates = list(self.models if candidates is None else candidates)
        probs = self.predict_proba(queries, candidates)
        utility = probs
        if costs is not None and willingness_to_pay:
            if isinstance(costs, dict):
                costs = [costs[m] for m in candidates]
            cost = np.asarray(costs, dtype=float)
            utility = probs - willingness_to_pay * cost
        return [candidates[i] for i in np.argmax(utility, axis=1)]

    # --------------------------------------------------------- embeddings
    def embed(self, queries: Queries) -> np.ndarray:
        if queries.embeddings is not None:
            return queries.embeddings
        if self._embedder is None:
            self._embedder = Embedder(getattr(self.config, "encoder", DEFAULT_ENCODER),
                                      progress=self.progress)
        return self._embedder.encode(queries.texts, desc=f"{self.name}: embedding queries")

    # --------------------------------------------------------- save / load
    def state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if arrays:
            raise ValueError(f"{self.name} router has no array state, got {sorted(arrays)}")

    def state_json(self) -> dict:
        return {}

    def load_state_json(self, state: dict) -> None:
        pass

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the router folder atomically: the old one stays loadable until it is done."""
        if not self.models:
            raise RuntimeError(f"cannot save an unfitted {self.name} router")
        directory = Path(directory)
        arrays = {k: np.ascontiguousarray(v) for k, v in self.state_arrays().items()}
        meta = {"router": self.name, "config": self.config.to_dict(), "models": self.models,
                "state": self.state_json(),
                "fitted_on": None if self.fitted_on is None else self.fitted_on.to_json(),
                "aptitude": None if self.aptitude is None else self.aptitude.to_json()}
        with atomic_folder(directory) as tmp:
            if arrays:
                save_file(arrays, str(tmp / STATE_FILE))
            (tmp / ROUTER_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Router":
        """Load a router saved by ``save``; on the base class, dispatches on the saved name."""
        from .registry import get_router_class

        directory = Path(directory)
        if not directory.is_dir():
            raise DataError("no such router folder", file=str(directory))
        path = directory / ROUTER_FILE
        if not path.exists():
            raise DataError(f"not a saved router (no {ROUTER_FILE})", file=str(directory))
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON: {err.msg}", file=str(path), line=err.lineno) from err
        if "router" not in meta:
            raise DataError("missing key", file=str(path), field="router")
        klass = get_router_class(meta["router"])
        if cls is not Router and not issubclass(klass, cls):
            raise TypeError(f"{path} holds a {klass.__name__}, not a {cls.__name__}")
        if meta.get("format") == "huggingface":  # saved with save_pretrained (CapSAT)
            return klass.load(directory)
        for key in ("config", "models", "state", "fitted_on", "aptitude"):
            if key not in meta:
                raise DataError("missing key", file=str(path), field=key)
        router = klass(klass.config_class.from_dict(meta["config"]))
        router.models = list(meta["models"])
        router.fitted_on = Provenance.from_json(meta["fitted_on"], file=str(path))
        if meta["aptitude"] is not None:
            router.aptitude = AptitudeTest.from_json(meta["aptitude"], file=str(path))
        router.load_state_json(meta["state"])
        state = directory / STATE_FILE
        router.load_state_arrays(load_file(str(state)) if state.exists() else {})
        return router
