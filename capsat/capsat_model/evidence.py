"""The model-capability encoder of CapSAT v3: a candidate described by item-level evidence.

A candidate is a set of evidence items: its outcome on each, with how often the training
pool got the item right. A known model's evidence is drawn from its train outcomes (a large
bank); a new model's is its aptitude answers. One mechanism for both: more evidence, a
sharper description.

The candidates scored together share one pool of items (``Evidence.embeddings``, N x E); each
candidate's evidence is the subset its ``mask`` marks, with its own ``outcomes``. So the
instruction-to-item similarities are computed once for every candidate.

The encoder reads each candidate's evidence *conditioned on the instruction being routed*:

- attention heads, from the instruction's embedding over the items' embeddings (learned
  projections, and heads on the plain cosine of the sentence embeddings with learned
  sharpness: a kernel kNN), each pooling the outcome (local accuracy), the outcome minus the
  pool's success (local ability, net of how hard the nearby items are), the pool's success
  and the effective number of items attended;
- the mean outcome of the k most similar items (hard kNN, several k);
- the candidate's accuracy on each task (shrunk toward its overall accuracy, with its count),
  at the instruction's task: its label when it has one, as every per-task router reads it,
  else a task head's posterior (logs carry no task label); and whole-set summaries
  (accuracy, residual, size);
- with ``difficulty_k``, the query's difficulty for the training pool: its success on the
  query's most similar items of the whole bank, against the task's (the candidate left out
  of the pool; every item counts, so a new model with 140 evidence items gets it as sharp as
  a known one); with ``difficulty_ridge``, the mean of that and a ridge regression of the
  pool's success on the bank items' embeddings (the query's text read as a whole).

An MLP turns these into the candidate's capability vector: the connector maps it to soft
tokens for the LLM, and a linear read-out (zero at the start) corrects the direct logit,
which starts at logit((outcomes of the ``start_knn`` most similar items + w x accuracy on the
instruction's task) / (start_knn + w)): a kNN shrunk toward the per-task prior (with
``start_knn`` 0, the per-task prior; training picks both on validation; with
``start_prior_shrink`` the same in residuals: the pool's success on the task plus the kNN's
residual shrunk toward the candidate's residual on the task, itself shrunk toward its overall
one, so a few items per task say little and every task keeps its level), plus
``difficulty_weight`` x the query's difficulty (a calibration: with ``shared_difficulty`` the
whole training pool's, the same shift for every candidate of a query, so it changes no
routing; without, each candidate's pool leaves it out, and a known model's local strength
then reads as difficulty; training picks the weight by log-loss). A candidate read from a few items (``Evidence.onboarded``: a model onboarded from
its aptitude answers) can have a start of its own (``onboarded_start``) and a difficulty weight
of its own (``onboarded_difficulty_weight``), picked on validation that reads the training
models as onboarded.

Nothing per-instruction that training could fit to its own loss queries enters the direct
path: what it knows of the instruction comes through other items (attention, kNN, task).

IRT heads, identified as in the ``irt`` router: ability theta_m (D) from the evidence with
query-independent attention, centred over the candidates scored together; discrimination a_q
(softplus) and difficulty b_q from the instruction. P_irt = sigmoid(a_q . theta_m - b_q), an
auxiliary output (its own loss; ``capsat explain`` reads it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

#: Per attention head: pooled outcome, pooled residual, pooled pool-success, log effective n.
POOLED_PER_HEAD = 4
#: Whole-set summaries: accuracy, mean residual, log size.
SUMMARY_FEATURES = 3
#: Per task (weighted by the instruction's task posterior): shrunk accuracy, residual,
#: log(1 + count).
TASK_FEATURES = 3
#: Per k of the hard kNN: mean outcome and mean residual of the k most similar items.
KNN_FEATURES = 2
#: Pseudo-counts of the candidate's overall accuracy in its per-task / kNN accuracies.
PRIOR_WEIGHT = 2.0
#: Pseudo-count of the task's pool success in the query's difficulty (``difficulty_k``).
DIFFICULTY_PRIOR_WEIGHT = 4.0
#: The ridge regression's reading of a query's success is clipped to [c, 1 - c].
RIDGE_CLIP = 0.01
EPS = 1e-6


@dataclass
class Evidence:
    """Evidence of M candidates over one shared pool of N items."""

    embeddings: torch.Tensor  # (N, E) item embeddings (unit length)
    tasks: torch.Tensor  # (N,) long: the item's task, an index into the router's tasks
    outcomes: torch.Tensor  # (M, N) the candidate's score on the item, in [0, 1]
    pool_success: torch.Tensor  # (M, N) the training pool's mean score on it (its difficulty)
    mask: torch.Tensor  # (M, N) bool: this item is in this candidate's evidence
    #: (M, T) the pool's mean success per task over the whole bank, the candidate left out
    #: as in ``pool_success``: the baseline of the query's difficulty (``difficulty_k``).
    task_success: torch.Tensor | None = None
    #: (M,) bool: the candidate is read from a few items, as an onboarded model from its
    #: aptitude answers (the encoder's ``onboarded_start`` applies); None: none is.
    onboarded: torch.Tensor | None = None
    #: (M, E) per candidate, ridge weights on an item's embedding for its pool's success net
    #: of the task's (``RidgeDifficulty``; the encoder's ``difficulty_ridge``).
    difficulty_weights: torch.Tensor | None = None
    #: The whole training pool, no candidate left out, as one row: its success on each item
    #: (1, N), per task (1, T) and its ridge weights (1, E): the query's difficulty shared by
    #: every candidate of the query (the encoder's ``shared_difficulty``).
    shared_success: torch.Tensor | None = None
    shared_task_success: torch.Tensor | None = None
    shared_difficulty_weights: torch.Tensor | None = None

    def to(self, device) -> "Evidence":
        return Evidence(*(None if t is None else t.to(device) for t in (
            self.embeddings, self.tasks, self.outcomes, self.pool_success, self.mask,
            self.task_success, self.onboarded, self.difficulty_weights, self.shared_success,
            self.shared_task_success, self.shared_difficulty_weights)))

    @property
    def n_candidates(self) -> int:
        return int(self.mask.shape[0])

    def select(self, rows) -> "Evidence":
        """The evidence of some candidates (the same item pool)."""
        return Evidence(self.embeddings, self.tasks, self.outcomes[rows],
                        self.pool_success[rows], self.mask[rows],
                        None if self.task_success is None else self.task_success[rows],
                        None if self.onboarded is None else self.onboarded[rows],
                        None if self.difficulty_weights is None
                        else self.difficulty_weights[rows], self.shared_success,
                        self.shared_task_success, self.shared_difficulty_weights)


@dataclass
class EncoderOutput:
    capability: torch.Tensor  # (B, M, C): what the connector turns into soft tokens
    direct_logit: torch.Tensor  # (B, M)
    prior_logit: torch.Tensor  # (B, M) the start of the direct logit (prior, kNN, difficulty)
    irt_logit: torch.Tensor  # (B, M) a_q . theta_m - b_q
    task_logits: torch.Tensor  # (B, T): which of the router's tasks the instruction is
    ability: torch.Tensor  # (M, D), centred over the M candidates
    discrimination: torch.Tensor  # (B, D) >= 0
    difficulty: torch.Tensor  # (B,) the IRT head's b_q
    #: (B, M) logit of the pool's success near the query minus that of its task (None: off)
    pool_difficulty: torch.Tensor | None = None
    #: (B, M) the difficulty the start moves by, times its weight: the whole pool's, the same
    #: for every candidate of a query (``shared_difficulty``), or ``pool_difficulty``
    start_difficulty: torch.Tensor | None = None


def summaries(evidence: Evidence) -> torch.Tensor:
    """(M, 3): accuracy and mean residual over the candidate's items, and log of their
    number."""
    mask = evidence.mask.float()
    count = mask.sum(dim=1).clamp_min(1.0)
    accuracy = (evidence.outcomes * mask).sum(dim=1) / count
    residual = ((evidence.outcomes - evidence.pool_success) * mask).sum(dim=1) / count
    return torch.stack([accuracy, residual, torch.log(count)], dim=1)


def _task_sums(evidence: Evidence, n_tasks: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(items' task one-hot (N, T), then per candidate and task (M, T): count, outcomes
    summed, residuals (outcome minus the pool's success) summed) over its evidence."""
    mask = evidence.mask.float()
    one_hot = nn.functional.one_hot(evidence.tasks.clamp_min(0), n_tasks).float()
    return (one_hot, mask @ one_hot, (evidence.outcomes * mask) @ one_hot,
            ((evidence.outcomes - evidence.pool_success) * mask) @ one_hot)


def task_statistics(evidence: Evidence, n_tasks: int) -> torch.Tensor:
    """(M, T, 3) per candidate and task: accuracy shrunk toward the candidate's overall
    accuracy (``PRIOR_WEIGHT`` pseudo-counts), mean residual shrunk toward 0, log(1 + count)."""
    one_hot, count, right, residual = _task_sums(evidence, n_tasks)
    overall = summaries(evidence)[:, :1]
    w = PRIOR_WEIGHT
    return torch.stack([(right + w * overall) / (count + w), residual / (count + w),
                        torch.log1p(count)], dim=-1)


def residual_prior(evidence: Evidence, n_tasks: int, shrink: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(level, residual), each (M, T) per candidate and task: the pool's success on the task,
    and the candidate's residual there (outcome minus the pool's success) shrunk toward its
    overall residual by ``shrink`` pseudo-counts. Their sum is a per-task accuracy that, for a
    model read from 10 aptitude items per task, is mostly its overall standing while each task
    keeps its difficulty; a bank of hundreds per task barely moves."""
    one_hot, count, _, residual = _task_sums(evidence, n_tasks)
    overall = summaries(evidence)[:, 1:2]
    level = evidence.task_success
    if level is None:  # the pool's success per task over every item scored together
        items = one_hot.sum(dim=0)
        level = torch.where(items > 0, (evidence.pool_success @ one_hot) / items.clamp_min(1),
                            torch.full_like(count, 0.5))
    return level, (residual + shrink * overall) / (count + shrink)


class RidgeDifficulty:
    """Ridge regressions (``penalty``) of a pool's success on each item net of the item's task,
    on the items' embeddings (N, E): a query's difficulty read from its text as a whole, where
    the kNN reads it from a few neighbours. The Gram matrix is built once, so a training
    step's loss queries are left out (as a test query is never in the bank) at the cost of
    their own rows."""

    def __init__(self, embeddings: torch.Tensor, tasks: torch.Tensor, penalty: float):
        if penalty <= 0:
            raise ValueError(f"RidgeDifficulty: penalty must be > 0, got {penalty}")
        self.x, self.tasks = embeddings.double(), tasks
        self.gram = self.x.T @ self.x + penalty * torch.eye(self.x.shape[1], dtype=self.x.dtype)

    def weights(self, pool_success: torch.Tensor, task_success: torch.Tensor,
                leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """(M, E) per candidate, the fit to its ``pool_success`` (M, N) minus its
        ``task_success`` (M, T) at each item's task, without the items ``leave_out``
        (indices)."""
        target = (pool_success - task_success[:, self.tasks]).double()  # (M, N)
        gram, moment = self.gram, self.x.T @ target.T  # (E, E), (E, M)
        if leave_out is not None and len(leave_out):
            out = self.x[leave_out]
            gram, moment = gram - out.T @ out, moment - out.T @ target[:, leave_out].T
        return torch.linalg.solve(gram, moment).T.float()


class EvidenceEncoder(nn.Module):
    def __init__(self, embedding_dim: int, n_tasks: int, *, heads: int = 4, head_dim: int = 32,
                 cosine_heads: int = 2, knn_ks: tuple[int, ...] = (10, 40), hidden: int = 128,
                 capability_dim: int = 128, irt_dim: int = 8, dropout: float = 0.1,
                 start_knn: int = 0, start_knn_weight: float = 4.0,
                 start_prior_shrink: float = 0.0, difficulty_k: int = 0,
                 difficulty_weight: float = 0.0, difficulty_ridge: float = 0.0,
                 onboarded_start: tuple[int, float, float] | None = None,
                 onboarded_difficulty_weight: float | None = None,
                 shared_difficulty: bool = False):
        super().__init__()
        self.heads, self.head_dim, self.n_tasks = heads, head_dim, n_tasks
        #: Where the direct logit starts: the mean outcome of the ``start_knn`` most similar
        #: evidence items, shrunk toward the per-task accuracy (0: the per-task accuracy).
        self.start_knn, self.start_knn_weight = int(start_knn), float(start_knn_weight)
        #: The per-task accuracy the start shrinks toward (0: ``task_statistics``'s; > 0:
        #: ``residual_prior`` with this many pseudo-counts).
        self.start_prior_shrink = float(start_prior_shrink)
        #: (start_knn, start_knn_weight, start_prior_shrink) of the candidates read from a
        #: few items (``Evidence.onboarded``): a kNN over 160 of a bank's thousands of items is
        #: local, over 160 of 140 aptitude answers it is the model's overall accuracy, which
        #: loses each task's level. None: they start as known models do.
        self.onboarded_start = None if onboarded_start is None else (
            int(onboarded_start[0]), float(onboarded_start[1]), float(onboarded_start[2]))
        self.cosine_heads, self.knn_ks = cosine_heads, tuple(int(k) for k in knn_ks)
        #: The query's difficulty: the pool's success on its ``difficulty_k`` most similar
        #: items, an input of the MLP (0: off) and, times ``difficulty_weight``, of the start.
        self.difficulty_k, self.difficulty_weight = int(difficulty_k), float(difficulty_weight)
        #: That weight for the candidates read from a few items (None: ``difficulty_weight``).
        self.onboarded_difficulty_weight = (None if onboarded_difficulty_weight is None
                                            else float(onboarded_difficulty_weight))
        #: > 0: that difficulty is the mean of the kNN's and the ridge regression's
        #: (``Evidence.difficulty_weights``, fitted with this penalty where evidence is built).
        self.difficulty_ridge = float(difficulty_ridge)
        #: The start moves by the query's difficulty for the whole training pool, the same for
        #: every candidate (``Evidence.shared_success``), not by each candidate's own (its pool
        #: without itself, which reads a known model's local strength as difficulty and moves
        #: the candidates of a query apart: in a pool of five, that cost routing).
        self.shared_difficulty = bool(shared_difficulty)
        self.task_head = nn.Sequential(nn.LayerNorm(embedding_dim),
                                       nn.Linear(embedding_dim, n_tasks))
        self.query_keys = nn.Linear(embedding_dim, heads * head_dim)
        self.item_keys = nn.Linear(embedding_dim, heads * head_dim)
        # Sharpness of each head (log scale): learned heads start at 10, cosine heads span
        # 10 (broad) to 100 (nearly the nearest item).
        self.log_scale = nn.Parameter(torch.full((heads,), math.log(10.0)))
        self.cosine_log_scale = nn.Parameter(
            torch.log(torch.logspace(1, 2, cosine_heads)) if cosine_heads else torch.zeros(0))
        inputs = ((heads + cosine_heads) * POOLED_PER_HEAD + len(self.knn_ks) * KNN_FEATURES
                  + SUMMARY_FEATURES + TASK_FEATURES + (1 if self.difficulty_k else 0))
        self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(inputs, hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, capability_dim),
                                 nn.GELU())
        self.readout = nn.Linear(capability_dim, 1)
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)
        self.ability_query = nn.Parameter(torch.zeros(head_dim))
        self.ability_keys = nn.Linear(embedding_dim, head_dim)
        self.ability_head = nn.Sequential(nn.Linear(head_dim + 2 + SUMMARY_FEATURES, hidden),
                                          nn.GELU(), nn.Linear(hidden, irt_dim))
        self.item_head = nn.Sequential(nn.LayerNorm(embedding_dim),
                                       nn.Linear(embedding_dim, hidden), nn.GELU(),
                                       nn.Linear(hidden, irt_dim + 1))

    # ---------------------------------------------------------------- parts
    def item_parameters(self, query_embeddings: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(discrimination a_q (B, D) >= 0, difficulty b_q (B,))."""
        out = self.item_head(query_embeddings)
        return nn.functional.softplus(out[:, :-1]), out[:, -1]

    def abilities(self, evidence: Evidence) -> torch.Tensor:
        """(M, D) abilities, centred over the M candidates (identified: relative to the pool
        scored together)."""
        keys = self.ability_keys(evidence.embeddings)  # (N, d)
        scores = (keys @ self.ability_query / math.sqrt(self.head_dim))[None].expand(
            evidence.n_candidates, -1)
        weights = _masked_softmax(scores, evidence.mask)  # (M, N)
        residual = evidence.outcomes - evidence.pool_success
        pooled = torch.cat([weights @ keys,
                            (weights * evidence.outcomes).sum(dim=1, keepdim=True),
                            (weights * residual).sum(dim=1, keepdim=True),
                            summaries(evidence)], dim=1)
        theta = self.ability_head(pooled)
        return theta - theta.mean(dim=0, keepdim=True) if len(theta) > 1 else theta

    def _read(self, scores: torch.Tensor, cosine: torch.Tensor, evidence: Evidence
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per candidate, what the heads and the hard kNN read from its evidence:
        (pooled (B, M, H, 4), knn (B, M, len(ks) * 2), start (B, M, S, 3): for each start
        (``_starts``), the sums of the outcomes and of the residuals of its ``start_knn`` most
        similar items, and how many there are).

        Candidates with the same items (every known model of a complete data set) share one
        softmax and one top-k: the cost is per distinct item set, not per candidate."""
        batch, heads = scores.shape[0], scores.shape[1]
        m = evidence.n_candidates
        pooled = scores.new_zeros(batch, m, heads, POOLED_PER_HEAD)
        knn = scores.new_zeros(batch, m, len(self.knn_ks) * KNN_FEATURES)
        start_ks = [k for k, _, _ in self._starts()]
        start = scores.new_zeros(batch, m, len(start_ks), 3)
        overall = summaries(evidence)[:, 0]
        sets, group_of = torch.unique(evidence.mask, dim=0, return_inverse=True)
        for g in range(len(sets)):
            rows = torch.nonzero(group_of == g).squeeze(1)
            items = torch.nonzero(sets[g]).squeeze(1)
            if len(items) == 0:
                continue  # no evidence: nothing read (zeros), the summaries say so
            y = evidence.outcomes[rows][:, items]  # (m_g, n_g)
            p = evidence.pool_success[rows][:, items]
            w = torch.softmax(scores[:, :, items], dim=-1)  # (B, H, n_g)
            effective = -torch.log((w ** 2).sum(-1).clamp_min(EPS))  # (B, H)
            pooled[:, rows] = torch.stack([
                torch.einsum("bhn,mn->bmh", w, y), torch.einsum("bhn,mn->bmh", w, y - p),
                torch.einsum("bhn,mn->bmh", w, p),
                effective[:, None].expand(-1, len(rows), -1)], dim=-1)
            k_max = min(max(*self.knn_ks, *start_ks), len(items))
            top = cosine[:, items].topk(k_max, dim=-1).indices  # (B, k)
            y_top, r_top = y[:, top], (y - p)[:, top]  # (m_g, B, k)
            features, w0 = [], PRIOR_WEIGHT
            for k in self.knn_ks:
                k = min(k, k_max)
                features += [(y_top[..., :k].sum(-1) + w0 * overall[rows, None]) / (k + w0),
                             r_top[..., :k].sum(-1) / (k + w0)]
            knn[:, rows] = torch.stack(features, dim=-1).permute(1, 0, 2)
            for s, k in enumerate(start_ks):
                if k:
                    k = min(k, k_max)
                    start[:, rows, s, 0] = y_top[..., :k].sum(-1).T
                    start[:, rows, s, 1] = float(k)
                    start[:, rows, s, 2] = r_top[..., :k].sum(-1).T
        return pooled, knn, start

    def _starts(self) -> list[tuple[int, float, float]]:
        """(start_knn, start_knn_weight, start_prior_shrink) of the known candidates' start,
        then the onboarded ones' where they have their own."""
        known = (self.start_knn, self.start_knn_weight, self.start_prior_shrink)
        return [known] + ([] if self.onboarded_start is None else [self.onboarded_start])

    def _begin(self, start: torch.Tensor, weight: float, shrink: float, evidence: Evidence,
               posterior: torch.Tensor, by_task: torch.Tensor) -> torch.Tensor:
        """(B, M) one start's P(right): the kNN sums ``start`` (B, M, 3) shrunk toward the
        per-task prior (in residuals over the pool with ``shrink``: each task keeps its
        level)."""
        if shrink:
            level, residual = residual_prior(evidence, self.n_tasks, shrink)
            return posterior @ level.T + (start[..., 2] + weight * posterior @ residual.T) / (
                start[..., 1] + weight)
        return (start[..., 0] + weight * by_task[..., 0]) / (start[..., 1] + weight)

    def start_difficulty_weights(self, evidence: Evidence, like: torch.Tensor) -> torch.Tensor:
        """(M,) each candidate's weight on the query's difficulty in the start (dtype and
        device of ``like``): the onboarded one where a candidate is read from a few items and
        one is set."""
        weights = torch.full((evidence.n_candidates,), self.difficulty_weight, dtype=like.dtype,
                             device=like.device)
        if self.onboarded_difficulty_weight is not None and evidence.onboarded is not None:
            weights = torch.where(evidence.onboarded.to(like.device),
                                  weights.new_tensor(self.onboarded_difficulty_weight), weights)
        return weights

    def task_posterior(self, task_logits: torch.Tensor,
                       known_tasks: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) which task each instruction is: its label where ``known_tasks`` (B,) gives
        one (an index; -1 = none), else the task head's posterior (logs carry no label)."""
        posterior = torch.softmax(task_logits, dim=-1)
        if known_tasks is None:
            return posterior
        known = known_tasks >= 0
        one_hot = nn.functional.one_hot(known_tasks.clamp_min(0), self.n_tasks).to(posterior)
        return torch.where(known[:, None], one_hot, posterior)

    def pool_difficulty(self, nearest: torch.Tensor, success: torch.Tensor | None,
                        task_success: torch.Tensor | None, ridge: torch.Tensor | None,
                        posterior: torch.Tensor, query_embeddings: torch.Tensor
                        ) -> torch.Tensor:
        """(B, R) how much harder the query is than its task for each of R pools (``success``
        (R, N) on the items, ``task_success`` (R, T) per task): logit((pool success on the
        query's k most similar items, ``nearest`` (B, k), + w x the task's) / (k + w)) -
        logit(the task's), the task weighted by ``posterior`` (B, T). Read from every item of
        the pool, whoever's evidence it is in, so a new model with a few evidence items gets
        it as sharp as a known one. Each candidate's pool leaves it out
        (``Evidence.pool_success``), so a known model's own outcomes never pose as difficulty;
        the shared pool is everyone's (``Evidence.shared_success``). With
        ``difficulty_ridge``, the mean of that and the ridge regression's reading of the
        query's embedding (``ridge`` (R, E)), clipped to [``RIDGE_CLIP``, 1 - ``RIDGE_CLIP``]
        (a linear reading can leave [0, 1])."""
        if success is None or task_success is None:
            raise ValueError("difficulty_k > 0 needs the evidence's pool success on the items "
                             "and per task")
        k = nearest.shape[1]
        task = (posterior @ task_success.T).clamp(EPS, 1 - EPS)  # (B, R)
        w = DIFFICULTY_PRIOR_WEIGHT
        near = (success[:, nearest].sum(-1).T + w * task) / (k + w)  # (B, R)
        difficulty = torch.logit(near.clamp(EPS, 1 - EPS)) - torch.logit(task)
        if not self.difficulty_ridge:
            return difficulty
        if ridge is None:
            raise ValueError("difficulty_ridge > 0 needs the evidence's ridge weights "
                             "(RidgeDifficulty)")
        read = (task + query_embeddings @ ridge.T).clamp(RIDGE_CLIP, 1 - RIDGE_CLIP)
        return (difficulty + torch.logit(read) - torch.logit(task)) / 2

    def forward(self, query_embeddings: torch.Tensor, evidence: Evidence,
                known_tasks: torch.Tensor | None = None) -> EncoderOutput:
        batch, m = query_embeddings.shape[0], evidence.n_candidates
        h, d = self.heads, self.head_dim
        q = self.query_keys(query_embeddings).view(batch, h, d)
        k = self.item_keys(evidence.embeddings).view(-1, h, d)
        scores = torch.einsum("bhd,nhd->bhn", q, k) * (self.log_scale.exp()[None, :, None]
                                                       / math.sqrt(d))
        cosine = query_embeddings @ evidence.embeddings.T  # (B, N)
        if self.cosine_heads:
            scores = torch.cat([scores, cosine[:, None] * self.cosine_log_scale.exp()[None, :,
                                                                                       None]],
                               dim=1)
        heads = scores.shape[1]
        pooled, knn, start = self._read(scores, cosine, evidence)
        task_logits = self.task_head(query_embeddings)
        posterior = self.task_posterior(task_logits, known_tasks)
        by_task = torch.einsum("bt,mtf->bmf", posterior, task_statistics(evidence, self.n_tasks))
        parts = [pooled.reshape(batch, m, heads * POOLED_PER_HEAD), knn,
                 summaries(evidence)[None].expand(batch, -1, -1), by_task]
        difficulty = start_difficulty = None
        if self.difficulty_k:
            # (B, k) the query's most similar items, found once for every pool read here
            nearest = cosine.topk(min(self.difficulty_k, cosine.shape[1]), dim=-1).indices
            difficulty = self.pool_difficulty(nearest, evidence.pool_success,
                                              evidence.task_success, evidence.difficulty_weights,
                                              posterior, query_embeddings)
            parts.append(difficulty[..., None])
            start_difficulty = difficulty
            if self.shared_difficulty:
                if evidence.shared_success is None:
                    raise ValueError("shared_difficulty needs the evidence's shared_success "
                                     "(the whole training pool)")
                start_difficulty = self.pool_difficulty(
                    nearest, evidence.shared_success, evidence.shared_task_success,
                    evidence.shared_difficulty_weights, posterior, query_embeddings
                ).expand(-1, m)
        capability = self.mlp(torch.cat(parts, dim=-1))
        starts = self._starts()
        begin = self._begin(start[:, :, 0], *starts[0][1:], evidence, posterior, by_task)
        if len(starts) > 1 and evidence.onboarded is not None and bool(evidence.onboarded.any()):
            onboarded = self._begin(start[:, :, 1], *starts[1][1:], evidence, posterior, by_task)
            begin = torch.where(evidence.onboarded[None], onboarded, begin)
        prior = torch.logit(begin.clamp(EPS, 1 - EPS))
        if difficulty is not None and (self.difficulty_weight
                                       or self.onboarded_difficulty_weight):
            prior = prior + (self.start_difficulty_weights(evidence, difficulty)[None]
                             * start_difficulty)
        direct = prior + self.readout(capability)[..., 0]
        discrimination, b_q = self.item_parameters(query_embeddings)
        ability = self.abilities(evidence)
        irt_logit = discrimination @ ability.T - b_q[:, None]
        return EncoderOutput(capability, direct, prior, irt_logit, task_logits, ability,
                             discrimination, b_q, difficulty, start_difficulty)


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    return weights * mask  # a candidate without evidence attends to nothing
