"""SMOOTHIE: label-free routing from the candidates' own outputs (Guha et al., NeurIPS 2024,
"Smoothie: Label Free Language Model Routing").

No outcome label is read anywhere: a candidate's quality is estimated from how its output
embedding agrees with the other candidates' output embeddings on the same instructions.

Model and estimator
-------------------
For an instruction x, let lambda_i in R^d be the embedding of candidate i's output (i = 1..m)
and lambda* the embedding of the unobserved true output. Given lambda*, the errors
lambda_i - lambda* are independent Gaussians with mean 0 and covariance sigma_i^2 I_d (density
proportional to exp(-theta_i ||lambda_i - lambda*||^2), theta_i = 1 / (2 sigma_i^2)); a small
sigma_i is a good candidate. Write D_i = E||lambda_i - lambda*||^2 = d sigma_i^2. For i != j,
lambda_i - lambda_j = (lambda_i - lambda*) - (lambda_j - lambda*), two independent centred
terms, so

    delta_ij := E||lambda_i - lambda_j||^2 = D_i + D_j,

and for every triplet of distinct i, j, k the unknown truth cancels:

    D_i = (delta_ij + delta_ik - delta_jk) / 2.

delta is estimated by sample means of the observable ||lambda_i - lambda_j||^2, and D_i by
averaging the triplet formula over all pairs (j, k) of the other candidates. With
r_i = sum_j delta_ij and T = sum_{j,k} delta_jk that average is, in closed form,

    D_i = r_i / (m - 2) - T / (2 (m - 1) (m - 2))          (needs m >= 3),

which is also the least-squares fit of delta_jk ~ D_j + D_k. Being linear in delta, the
estimate over a set of instructions is the (weighted) mean of the per-instruction estimates
D_i(x) computed from that instruction's own pairwise distances (``triplet_squared_errors``), so:

* SMOOTHIE-GLOBAL: D_i = mean of D_i(x) over the instructions of one task ("globally per
  task"; over the whole batch when tasks are unknown). One score per candidate and task.
* SMOOTHIE-LOCAL: D_i(x) = kernel-weighted mean of D_i(x') over the k nearest instructions x'
  of x (cosine similarity of the instruction embeddings; x itself is its own nearest).

Scores in [0, 1]
----------------
``predict_proba`` returns q_i = (4 - D_i) / 6. Output embeddings are unit vectors, so every
||lambda_i - lambda_j||^2 lies in [0, 4] and the estimate D_i in [-2, 4] (below 0 only through
sampling noise); the map is affine and strictly decreasing, so it lands in [0, 1] and keeps the
order: argmax q = argmin D = argmax theta (q = 2/3 means D = 0, an output on the truth). These
are *quality scores*, not calibrated probabilities: routing (argmax), rank-based AUC and the
cost-aware policies use them as they are; log-loss and ECE are not meaningful for them.

Transductive (default) and inductive modes
------------------------------------------
``mode="transductive"`` is what the paper does: the queries being scored are scored from their
own candidates' outputs (``Queries.responses``; ``Queries.from_table`` fills them from a table
with responses). That needs no label, so it is legitimate at test time; but a query's scores
depend on the batch it is scored with (GLOBAL: its task within the batch; LOCAL: its neighbours
within the batch), and queries without responses raise a DataError. ``fit`` then stores nothing.
``mode="inductive"`` instead estimates D(x) on the *training* queries' responses at fit time
(labels still unused): GLOBAL keeps one estimate per training task (all tasks pooled for a task
it never saw), LOCAL averages over the k nearest training instructions; new queries then need
no responses.

Output texts are embedded with the router's encoder (the embedded all-MiniLM-L6-v2 by
default) through the same on-disk cache as query embeddings.
"""
from __future__ import annotations

import numpy as np

from data_builders.embeddings import Embedder
from data_builders.errors import DataError

from ..base import Queries, QueriesLike, Router, as_queries
from ..common import check_grid, query_matrix, require_state, unit_rows
from .config import SmoothieGlobalConfig, SmoothieLocalConfig

MODES = ("transductive", "inductive")
#: Bounds of the triplet estimate D for unit-norm embeddings (see the module docstring).
ERROR_LOW, ERROR_HIGH = -2.0, 4.0


# ---------------------------------------------------------------- estimator
def triplet_squared_errors(embeddings: np.ndarray) -> np.ndarray:
    """Per-sample SMOOTHIE estimates of E||lambda_i - lambda*||^2.

    ``embeddings``: (n_samples, m, d) output embeddings of m >= 3 candidates. Returns an
    (n_samples, m) array: row x is the triplet estimate averaged over all pairs of the other
    candidates, from sample x's pairwise squared distances alone. Averaging rows (uniformly or
    with weights) gives the estimate over those samples.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"expected (n_samples, m, d) embeddings, got shape {x.shape}")
    m = x.shape[1]
    if m < 3:
        raise ValueError(f"SMOOTHIE's triplet estimate needs at least 3 candidates, got {m}")
    gram = np.einsum("nid,njd->nij", x, x)
    norms = np.einsum("nii->ni", gram)
    distances = np.maximum(norms[:, :, None] + norms[:, None, :] - 2.0 * gram, 0.0)
    distances[:, np.arange(m), np.arange(m)] = 0.0
    row_sums = distances.sum(axis=2)
    total = row_sums.sum(axis=1, keepdims=True)
    return row_sums / (m - 2) - total / (2.0 * (m - 1) * (m - 2))


def quality_scores(squared_errors: np.ndarray) -> np.ndarray:
    """The estimated squared error D of unit-norm output embeddings mapped onto [0, 1] by the
    strictly decreasing affine map (4 - D) / 6 (order-preserving; not a probability)."""
    return (ERROR_HIGH - np.asarray(squared_errors, dtype=float)) / (ERROR_HIGH - ERROR_LOW)


def group_means(values: np.ndarray, groups: list) -> np.ndarray:
    """Each row replaced by the mean of the rows of its group (order of first appearance)."""
    out = np.empty_like(values)
    labels = np.asarray(groups, dtype=object)
    for group in dict.fromkeys(groups):
        rows = labels == group
        out[rows] = values[rows].mean(axis=0)
    return out


# ------------------------------------------------------------------- config


# ------------------------------------------------------------------ routers
class _SmoothieRouter(Router):
    """Shared by both variants: output embeddings, per-sample estimates, modes, state."""

    label_free = True
    needs_responses = True
    config_class = SmoothieGlobalConfig

    def _check_config(self) -> None:
        if self.config.mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {MODES}, got "
                             f"{self.config.mode!r}")
        check_grid("batch_size", [self.config.batch_size], minimum=1, integer=True)
        if len(self.models) < 3:
            raise DataError(f"{self.name} needs at least 3 candidate models (its estimate "
                            f"compares triplets of outputs), got {self.models}", field="model")

    # ------------------------------------------------------- output embeddings
    def response_texts(self, queries: Queries) -> list[list[str]]:
        """The queries' output texts, one list per model of the router (its order), checked:
        every (query, model) pair needs a text."""
        if queries.responses is None:
            raise DataError(f"{self.name} ({self.config.mode}) scores queries from the "
                            f"candidates' own outputs, but these queries carry no responses: "
                            f"pass Queries(..., responses={{model: texts}}) or a table with a "
                            f"response per model, or use mode='inductive'", field="response")
        missing = [m for m in self.models if m not in queries.responses]
        if missing:
            raise DataError(f"{self.name}: no responses of model(s) {missing}; the router scores "
                            f"{self.models} together", field="response")
        for model in self.models:
            for row, text in enumerate(queries.responses[model]):
                if not isinstance(text, str):
                    which = queries.ids[row] if queries.ids is not None else f"#{row}"
                    raise DataError(f"{self.name}: model {model!r} has no response text for "
                                    f"query {which} (got {text!r})", field="response")
        return [queries.responses[model] for model in self.models]

    def output_embeddings(self, texts: list[list[str]]) -> np.ndarray:
        """(n_queries, n_models, d) unit-norm embeddings of per-model output texts."""
        if self._embedder is None:
            self._embedder = Embedder(self.config.encoder)
        flat = [text for column in texts for text in column]
        vectors = self._embedder.encode(flat, desc=f"{self.name}: embedding outputs")
        vectors = unit_rows(vectors.astype(np.float64))
        return vectors.reshape(len(texts), len(texts[0]), -1).transpose(1, 0, 2)

    def sample_squared_errors(self, queries: Queries) -> np.ndarray:
        """(n_queries, n_models) per-query estimates D_i(x) from the queries' own outputs."""
        texts = self.response_texts(queries)
        size = self.config.batch_size
        blocks = [triplet_squared_errors(self.output_embeddings(
                      [column[start:start + size] for column in texts]))
                  for start in range(0, len(queries), size)]
        return np.concatenate(blocks) if blocks else np.zeros((0, len(self.models)))

    # ------------------------------------------------------------------ fit
    def _fit(self, train, train_queries, validation, validation_queries):
        # No label is read: train.scores is never touched (tests fit on NaN scores).
        self._check_config()
        if self.config.mode == "inductive":
            self.train_errors = self.sample_squared_errors(train_queries)
            self.train_tasks = list(train_queries.tasks)
            self._fit_inductive(train_queries)

    def _fit_inductive(self, train_queries: Queries) -> None:
        pass

    # --------------------------------------------------------------- scoring
    def squared_errors(self, queries: QueriesLike) -> np.ndarray:
        """(n_queries x n_models) estimated E||lambda_i - lambda*||^2 (lower = better): the
        quantity behind ``predict_proba``, before the map onto [0, 1]."""
        queries = as_queries(queries)
        if not self.models:
            raise RuntimeError(f"{self.name} router is not fitted")
        if self.uses_embeddings and queries.embeddings is None:
            queries.embeddings = self.embed(queries)
        return self._squared_errors(queries)

    def _predict(self, queries: Queries) -> np.ndarray:
        return quality_scores(self._squared_errors(queries))

    def _squared_errors(self, queries: Queries) -> np.ndarray:
        raise NotImplementedError

    # ------------------------------------------------------------ save / load
    def state_json(self):
        if self.config.mode == "transductive":
            return {}
        return {"train_tasks": self.train_tasks}

    def load_state_json(self, state):
        if self.config.mode == "inductive":
            require_state(self.name, state, ["train_tasks"])
            self.train_tasks = list(state["train_tasks"])

    def state_arrays(self):
        if self.config.mode == "transductive":
            return {}
        return {"train_errors": self.train_errors}

    def load_state_arrays(self, arrays):
        expected = set(self.state_arrays_keys())
        if set(arrays) != expected:
            raise DataError(f"saved {self.name} router ({self.config.mode}) must hold arrays "
                            f"{sorted(expected)}, got {sorted(arrays)}", field="state")
        if self.config.mode == "inductive":
            self.train_errors = arrays["train_errors"]

    def state_arrays_keys(self) -> list[str]:
        return [] if self.config.mode == "transductive" else ["train_errors"]


class SmoothieGlobalRouter(_SmoothieRouter):
    """SMOOTHIE-GLOBAL (label-free): one quality score per candidate and task from its outputs.

    The score is the agreement of the candidate's output embeddings with the other candidates'
    (the triplet estimate of the module docstring), averaged over the task's queries.
    """

    name = "smoothie_global"
    config_class = SmoothieGlobalConfig

    def _squared_errors(self, queries: Queries) -> np.ndarray:
        tasks = list(queries.tasks) if queries.tasks is not None else ["*"] * len(queries)
        if self.config.mode == "transductive":
            return group_means(self.sample_squared_errors(queries), tasks)
        pooled = self.train_errors.mean(axis=0)
        per_task = {task: self.train_errors[np.asarray(self.train_tasks, dtype=object) == task]
                    .mean(axis=0) for task in dict.fromkeys(self.train_tasks)}
        return np.stack([per_task.get(task, pooled) for task in tasks]) if len(tasks) else \
            np.zeros((0, len(self.models)))


class SmoothieLocalRouter(_SmoothieRouter):
    """SMOOTHIE-LOCAL (label-free): per-query quality scores from the candidates' outputs.

    The per-query triplet estimates are averaged over the k most similar instructions
    (kernel-weighted), so each query gets its own ranking of the candidates.
    """

    name = "smoothie_local"
    config_class = SmoothieLocalConfig
    uses_embeddings = True

    def _check_config(self) -> None:
        super()._check_config()
        check_grid("k", [self.config.k], minimum=1, integer=True)
        check_grid("bandwidth", [self.config.bandwidth], minimum=0.0)

    def _fit_inductive(self, train_queries: Queries) -> None:
        self.train_embeddings = unit_rows(
            np.asarray(train_queries.embeddings, dtype=np.float64)).astype(np.float32)

    def _squared_errors(self, queries: Queries) -> np.ndarray:
        if self.config.mode == "transductive":
            pool_embeddings = unit_rows(np.asarray(queries.embeddings, dtype=np.float64))
            pool_errors = self.sample_squared_errors(queries)
        else:
            pool_embeddings = self.train_embeddings.astype(np.float64)
            pool_errors = self.train_errors
        x = unit_rows(query_matrix(self, queries, pool_embeddings.shape[1]))
        k = min(int(self.config.k), len(pool_embeddings))
        out = []
        for start in range(0, len(x), self.config.batch_size):
            sim = x[start:start + self.config.batch_size] @ pool_embeddings.T
            # Stable sort: ties (twin instructions) go to the earlier pool entry, so the result
            # does not depend on the partitioning algorithm.
            nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
            weights = self._kernel(np.take_along_axis(sim, nearest, axis=1))
            out.append(np.einsum("qk,qkm->qm", weights, pool_errors[nearest]))
        return np.concatenate(out)

    def _kernel(self, similarities: np.ndarray) -> np.ndarray:
        """Row-normalised neighbour weights from cosine similarities (most similar first)."""
        h = float(self.config.bandwidth)
        if h == 0.0:
            weights = np.ones_like(similarities)
        else:
            distance = 1.0 - similarities
            # Relative to the nearest, so a far-away query still gets finite weights.
            weights = np.exp(-(distance ** 2 - distance[:, :1] ** 2) / (2.0 * h * h))
        return weights / weights.sum(axis=1, keepdims=True)

    def state_arrays(self):
        arrays = super().state_arrays()
        if self.config.mode == "inductive":
            arrays["train_embeddings"] = self.train_embeddings
        return arrays

    def state_arrays_keys(self) -> list[str]:
        keys = super().state_arrays_keys()
        return keys + (["train_embeddings"] if self.config.mode == "inductive" else [])

    def load_state_arrays(self, arrays):
        super().load_state_arrays(arrays)
        if self.config.mode == "inductive":
            self.train_embeddings = arrays["train_embeddings"]
