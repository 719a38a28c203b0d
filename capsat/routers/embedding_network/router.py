"""The shared plumbing of the routers that are a small torch network from query embeddings
(n, d) to success logits (n, models): ``mf``, ``irt`` and ``multilabel``.

``EmbeddingNetworkRouter`` does seeded construction, training with ``fit_network``, the
optional size grid on validation, and save/load; a subclass only builds its network.

``fit_network`` is the one training loop. Targets may be graded in [0, 1] and may be missing
(NaN: no record), so the loss is a masked binary cross-entropy with soft targets. Training
stops early on the validation loss and restores the best epoch: hyper-parameters and epochs
are chosen on validation, never on test.
"""
from __future__ import annotations

import copy
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from data_builders.outcomes import OutcomeTable

from ..base import Queries, Router
from ..common import (
    check_grid,
    has_rows,
    query_matrix,
    require_state,
    score_matrix,
    smoothed_model_means,
)
from .config import NetworkConfig


@dataclass
class FitResult:
    best_epoch: int
    best_validation_loss: float
    train_losses: list[float]
    validation_losses: list[float]


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the observed (non-NaN) targets."""
    mask = ~torch.isnan(targets)
    if not mask.any():
        return logits.sum() * 0.0
    return nn.functional.binary_cross_entropy_with_logits(logits[mask], targets[mask])


def _loss_on(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    module.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            yb = y[start:start + batch_size]
            n = int((~torch.isnan(yb)).sum())
            if n:
                total += float(masked_bce(module(x[start:start + batch_size]), yb)) * n
                count += n
    return total / max(count, 1)


def fit_network(module: nn.Module, x_train: np.ndarray, y_train: np.ndarray,
                x_val: np.ndarray | None, y_val: np.ndarray | None, *, epochs: int,
                batch_size: int, lr: float, weight_decay: float, patience: int, seed: int,
                desc: str = "training", progress: bool = True) -> FitResult:
    """Train ``module`` in place with AdamW on masked BCE; keep the best validation epoch.

    Without validation data every epoch runs and the last one is kept.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x_train, dtype=torch.float32)
    y = torch.as_tensor(y_train, dtype=torch.float32)
    has_val = x_val is not None and y_val is not None and len(x_val) > 0
    if has_val:
        xv = torch.as_tensor(x_val, dtype=torch.float32)
        yv = torch.as_tensor(y_val, dtype=torch.float32)
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    best_state, best_loss, best_epoch, stale = None, float("inf"), 0, 0
    train_losses, val_losses = [], []
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", leave=False, disable=not progress)
    for epoch in bar:
        module.train()
        order = torch.randperm(len(x), generator=generator)
        running, batches = 0.0, 0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = masked_bce(module(x[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            running += float(loss.detach())
            batches += 1
        train_losses.append(running / max(batches, 1))
        if not has_val:
            continue
        val_loss = _loss_on(module, xv, yv, 4096)
        val_losses.append(val_loss)
        bar.set_postfix(val_loss=f"{val_loss:.4f}")
        if val_loss < best_loss - 1e-5:
            best_state = copy.deepcopy(module.state_dict())
            best_loss, best_epoch, stale = val_loss, epoch, 0
        else:
            stale += 1
            if stale >= patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    else:
        best_epoch = len(train_losses)
    module.eval()
    return FitResult(best_epoch, best_loss, train_losses, val_losses)


def predict_network(module: nn.Module, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Sigmoid of the network's logits, as a float64 array."""
    module.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[start:start + batch_size], dtype=torch.float32)
            out.append(torch.sigmoid(module(xb)).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def module_arrays(module: nn.Module, prefix: str = "net.") -> dict[str, np.ndarray]:
    """A module's parameters as numpy arrays, for safetensors."""
    return {prefix + k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def load_module_arrays(module: nn.Module, arrays: dict[str, np.ndarray],
                       prefix: str = "net.") -> None:
    state = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
             if k.startswith(prefix)}
    module.load_state_dict(state, strict=True)


class EmbeddingNetworkRouter(Router):
    """A torch network from query embeddings (n, d) to success logits (n, models)."""

    uses_embeddings = True
    config_class = NetworkConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.network: nn.Module | None = None
        self.input_dim: int | None = None
        self.dim: int | None = None
        self.fit_result: FitResult | None = None

    @abstractmethod
    def _build(self, input_dim: int, dim: int, prior: np.ndarray) -> nn.Module:
        """A fresh network for ``len(self.models)`` models; ``prior`` are the base-rate logits
        (zeros when rebuilt for loading, where the saved weights replace them)."""

    def _seeded_build(self, input_dim: int, dim: int, prior: np.ndarray) -> nn.Module:
        # The initial weights come from the global torch RNG: seed it without disturbing the
        # caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return self._build(input_dim, dim, prior)

    def _fit(self, train: OutcomeTable, train_queries: Queries,
             validation: OutcomeTable | None, validation_queries: Queries | None) -> None:
        config = self.config
        self._check_config()
        dims = check_grid("dim_choices", config.dim_choices or [config.dim], minimum=1,
                          integer=True)
        x_train = np.asarray(train_queries.embeddings, dtype=np.float32)
        self.input_dim = int(x_train.shape[1])
        y_train = score_matrix(train)
        x_val = y_val = None
        if has_rows(validation):
            x_val = self._features(validation_queries)
            y_val = score_matrix(validation)
        elif len(dims) > 1:
            raise ValueError(f"{self.name}: dim_choices {dims} need a validation table to "
                             f"choose on")
        base_rate = smoothed_model_means(y_train, self.models)
        prior = np.log(base_rate / (1 - base_rate))
        best = None
        for dim in dims:
            network = self._seeded_build(x_train.shape[1], dim, prior)
            result = fit_network(network, x_train, y_train, x_val, y_val,
                                 epochs=config.max_epochs, batch_size=config.batch_size,
                                 lr=config.learning_rate, weight_decay=config.weight_decay,
                                 patience=config.patience, seed=config.seed,
                                 desc=f"{self.name} D={dim}", progress=self.progress)
            if best is None or result.best_validation_loss < best[2].best_validation_loss:
                best = (dim, network, result)
        self.dim, self.network, self.fit_result = best
        self._after_fit(x_train, y_train)

    def _after_fit(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        """Hook for summaries of the training data kept with the router."""

    def _check_config(self) -> None:
        config = self.config
        for name in ("dim", "batch_size", "patience"):
            check_grid(name, [getattr(config, name)], minimum=1, integer=True)
        check_grid("max_epochs", [config.max_epochs], minimum=0, integer=True)
        check_grid("learning_rate", [config.learning_rate], minimum=1e-12)
        check_grid("weight_decay", [config.weight_decay], minimum=0.0)
        if not 0.0 <= config.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")

    def _features(self, queries: Queries) -> np.ndarray:
        return query_matrix(self, queries, self.input_dim).astype(np.float32)

    def _predict(self, queries: Queries) -> np.ndarray:
        return predict_network(self.network, self._features(queries))

    # --------------------------------------------------------- save / load
    def state_json(self) -> dict:
        result = self.fit_result
        return {"input_dim": self.input_dim, "dim": self.dim,
                "selected_on": "validation" if result.validation_losses else "config",
                "best_epoch": result.best_epoch,
                "best_validation_loss": (None if not np.isfinite(result.best_validation_loss)
                                         else result.best_validation_loss),
                "train_losses": result.train_losses,
                "validation_losses": result.validation_losses}

    def load_state_json(self, state: dict) -> None:
        require_state(self.name, state, ["input_dim", "dim", "selected_on", "best_epoch",
                                         "best_validation_loss", "train_losses",
                                         "validation_losses"])
        self.input_dim, self.dim = int(state["input_dim"]), int(state["dim"])
        loss = state["best_validation_loss"]
        self.fit_result = FitResult(int(state["best_epoch"]),
                                    float("inf") if loss is None else float(loss),
                                    list(state["train_losses"]),
                                    list(state["validation_losses"]))

    def state_arrays(self) -> dict[str, np.ndarray]:
        return module_arrays(self.network)

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.network = self._build(self.input_dim, self.dim, np.zeros(len(self.models)))
        load_module_arrays(self.network, arrays)
        self.network.eval()
