"""One training loop for the routers that are small torch networks (multilabel, irt, mf).

Every such network maps query features (n, d) to logits over models (n, m). Targets may be
graded in [0, 1] and may be missing (NaN: no record), so the loss is a masked binary
cross-entropy with soft targets. Training stops early on the validation loss and restores the
best epoch: hyper-parameters and epochs are chosen on validation, never on test.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


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
                desc: str = "training") -> FitResult:
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
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", leave=False)
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
