"""Training configuration for CapSAT (the model's own architecture is ``CapsatConfig``).

Both dataclasses are read together from a YAML file (``--config``) and overridden on the
command line (``--lr-lora 1e-4``), through trl's ``TrlParser``.
"""
from __future__ import annotations

from dataclasses import dataclass

from capsat.routers.base import help_field
from data_builders.splits import MODEL_SPLITS, SPLIT_KINDS

SELECTIONS = ("routing", "auc")
#: What the start may be picked on: the checkpoints' criterion, or one of its own.
START_SELECTIONS = ("select_on", *SELECTIONS, "log_loss")
VALIDATION_EVIDENCE = ("bank", "aptitude", "sampled", "split")
START_QUERIES = ("validation", "train")
ONBOARDED_START_EVIDENCE = ("none", "sampled", "aptitude")


@dataclass
class TrainConfig:
    data: str = help_field("mmlu_pro", "data set name or path of an outcome file")
    split: str = help_field("query", "query | model | family | task: the same splits as "
                                     "`capsat eval`")
    seed: int = help_field(0, "seed of the split, aptitude test, sampling and initialisation")
    test_size: float = help_field(0.2, "share of queries (or models / tasks) held out for test")
    validation_size: float = help_field(0.1, "share of train carved out for validation")
    models: list[str] = help_field([], "candidate pool (empty: every model of the data)")
    held_out: list[str] = help_field([], "models (split=model), families (split=family) or "
                                         "tasks (split=task) to hold out; empty: a seeded share")
    k_per_task: int = help_field(10, "aptitude-test core items per task (what a new model "
                                     "answers to be onboarded)")
    max_train_queries: int = help_field(0, "train on at most this many train queries (a seeded "
                                           "sample; 0 = all)")
    max_validation_queries: int = help_field(300, "validate on at most this many validation "
                                                  "queries (a seeded sample; 0 = all)")
    neighbours: int = help_field(40, "nearest bank items of each loss query put in its step's "
                                     "evidence (so a known model's evidence reads as its whole "
                                     "bank does)")
    queries_per_step: int = help_field(32, "loss queries per step of the encoder stage (per "
                                           "process)")
    evidence_min: int = help_field(20, "fewest evidence items of a candidate in aptitude mode")
    evidence_max: int = help_field(500, "most evidence items of a candidate in aptitude mode "
                                        "(and the random part of the step's item pool)")
    bank_share: float = help_field(0.5, "share of the candidates that read the whole step pool "
                                        "(their bank); the rest read a random 20..500 of it, as "
                                        "a new model reads its aptitude answers")
    pseudo_models: int = help_field(4, "extra candidates per step made by mixing two training "
                                       "models task by task (more models than the pool has)")
    encoder_steps: int = help_field(1500, "steps of the first stage: the capability encoder "
                                          "alone (no LLM forward; cheap)")
    llm_steps: int = help_field(200, "steps of the second stage: the LLM reads the soft tokens "
                                     "(LoRA, connector and gate train)")
    llm_queries_per_step: int = help_field(4, "loss queries per step of the LLM stage (each is "
                                              "one packed pass over every candidate)")
    train_encoder_with_llm: bool = help_field(False, "keep training the encoder in the LLM "
                                                     "stage (default: frozen, its stage-one "
                                                     "best kept)")
    lr_encoder: float = help_field(1e-3, "learning rate of the capability encoder")
    lr_llm_heads: float = help_field(1e-3, "learning rate of the connector and gate")
    lr_lora: float = help_field(2e-4, "learning rate of the LoRA weights")
    weight_decay: float = help_field(0.01, "AdamW weight decay")
    weight_pointwise: float = help_field(1.0, "weight of the Yes/No cross-entropy on every "
                                              "(query, candidate) pair (calibration)")
    weight_listwise: float = help_field(1.0, "weight of the per-query softmax over the "
                                             "candidates toward the ones that got it right (the "
                                             "comparison routing makes)")
    weight_irt: float = help_field(0.3, "weight of the IRT auxiliary loss")
    weight_task: float = help_field(0.1, "weight of the task head's cross-entropy")
    task_label_share: float = help_field(0.5, "share of loss queries, and of validation "
                                              "queries, whose task label the encoder reads "
                                              "(the rest get the task head's posterior, as an "
                                              "unlabelled log does); used when the model's "
                                              "read_task_labels is on")
    task_head_steps: int = help_field(300, "full-batch steps that fit the task head alone on "
                                           "the loss queries' labels before the start is "
                                           "chosen, so validation reads its unlabelled "
                                           "queries as a trained router does (an untrained "
                                           "head reads each as every task at once, which "
                                           "handicaps the per-task prior against kNN starts "
                                           "and step 0 against any trained step); 0: off")
    start_knn_grid: list[int] = help_field([0, 10, 20, 40, 80, 160], "values of the model's "
                                           "start_knn tried before training (on start_queries) "
                                           "(the best by select_on is kept; empty: the model "
                                           "config's); up to the knn router's largest k, as a "
                                           "known model's bank of thousands of items reads "
                                           "best through many neighbours")
    start_knn_weight_grid: list[float] = help_field([2.0, 8.0, 32.0], "values of the model's "
                                                    "start_knn_weight tried with each")
    start_prior_shrink_grid: list[float] = help_field([], "values of the model's "
                                                      "start_prior_shrink tried with every "
                                                      "start of those grids (empty: the model "
                                                      "config's)")
    start_min_gain_se: float = help_field(1.0, "a start that reads the nearest evidence "
                                          "items (start_knn > 0) replaces the per-task prior "
                                          "(start_knn 0) only when its selection score is "
                                          "higher by this many paired bootstrap standard "
                                          "errors over the start_queries (0: "
                                          "any gain): the pick is made on the training "
                                          "models, and a held-out family unlike them reads "
                                          "the prior better than a start that validation "
                                          "barely preferred")
    start_margin_counts_selection: bool = help_field(True, "the kNN start that start_min_gain_se "
                                                     "judges is the best of the grid's, and "
                                                     "the best of many noisy gains is biased "
                                                     "up (the winner's curse): its gain must "
                                                     "clear the Phi(start_min_gain_se) "
                                                     "quantile of the bootstrap's largest "
                                                     "centred gain over every kNN start tried "
                                                     "(over the queries: about "
                                                     "start_min_gain_se standard errors for "
                                                     "one start, more for many; a model "
                                                     "split's margin over the models is for "
                                                     "the picked start alone) (false: "
                                                     "start_min_gain_se standard errors of the "
                                                     "picked start's gain alone)")
    margin_over_models: bool = help_field(True, "where a choice serves models it was not "
                                          "made on (the start and the kept step of the model "
                                          "and family splits, and the onboarded start), its "
                                          "margin (start_min_gain_se, checkpoint_min_gain_se) "
                                          "is a bootstrap over the candidate models as well as "
                                          "the queries: a gain on 7 training models need not "
                                          "carry to new ones (false: over the queries only)")
    start_select_on: str = help_field("select_on", "what the start is picked on: "
                                      "'select_on' (the checkpoints' criterion), "
                                      "'routing', 'auc' (pooled) or 'log_loss'; routing "
                                      "compares the candidates of each query and cannot see "
                                      "a start that loses each task's level, which pooled "
                                      "AUC and log-loss count (the margin over the prior, "
                                      "start_min_gain_se, is then in that criterion)")
    onboarded_start_evidence: str = help_field("none", "with validation on the training "
                                               "models' banks (a query split): also pick the "
                                               "start of onboarded candidates (a new model "
                                               "read from its aptitude answers), on "
                                               "validation that reads the training models "
                                               "from 'sampled' (as many non-core bank items "
                                               "per task as the aptitude test has) or "
                                               "'aptitude' (their core items) items only; "
                                               "'none': onboarded models start as known ones")
    onboarded_start_shrink_grid: list[float] = help_field([2.0, 8.0, 32.0, 128.0], "values of "
                                                          "start_prior_shrink tried for the "
                                                          "onboarded start (with the start_knn "
                                                          "and weight grids)")
    start_queries: str = help_field("validation", "where the start is picked: "
                                    "'validation' (the validation queries) or 'train' (up "
                                    "to start_train_queries loss queries, read in batches "
                                    "against the bank without them and their same-text "
                                    "twins: "
                                    "cross-validation on the train part, several times the "
                                    "queries, so a less noisy pick; the start has no "
                                    "trained parameters to overfit them; each read with its "
                                    "task label, as test queries are, since the task head "
                                    "was fitted on these very queries)")
    start_train_queries: int = help_field(4000, "with start_queries or difficulty_queries "
                                                "'train': at most this many loss queries (a "
                                                "seeded sample of those every fitted model "
                                                "has a score on)")
    difficulty_queries: str = help_field("validation", "where the difficulty weights "
                                         "(difficulty_weight, and onboarded_difficulty_weight) "
                                         "are picked by log-loss: 'validation' or 'train' (the "
                                         "start_train_queries loss queries read out of the bank, "
                                         "as start_queries 'train' reads them: one weight on "
                                         "thousands of (query, model) pairs instead of "
                                         "validation's few hundred queries; where the router "
                                         "kept at the encoder stage's end is a trained step, "
                                         "fitted on those queries, its weight is picked on "
                                         "validation)")
    start_difficulty_grid: list[float] = help_field([0.0, 0.5, 1.0, 1.5, 2.0], "values of "
                                                    "the model's difficulty_weight tried on "
                                                    "validation after the start (lowest "
                                                    "log-loss kept; empty: the model "
                                                    "config's)")
    pick_difficulty_before_training: bool = help_field(False, "pick the difficulty weight "
                                                       "from start_difficulty_grid before "
                                                       "step 0 (false: the encoder trains with "
                                                       "the model config's difficulty_weight, "
                                                       "0 by default: an input only, and the "
                                                       "re-pick after the encoder stage "
                                                       "chooses; lower validation log-loss on "
                                                       "all four new-model splits tried)")
    repick_difficulty_after_encoder: bool = help_field(True, "at the encoder stage's end, pick "
                                                       "the difficulty weight again from "
                                                       "start_difficulty_grid on the kept "
                                                       "router's validation log-loss (the "
                                                       "pick before training cannot see how "
                                                       "the trained encoder reads the same "
                                                       "signal)")
    validation_evidence: str = help_field("split", "what the training models read at "
                                          "validation: 'bank' (their whole train outcomes, "
                                          "as known models), 'aptitude' (only their aptitude "
                                          "items, as a new model onboarded from its test), "
                                          "'sampled' (as many items per task as the test, "
                                          "drawn from their other bank items: the core items "
                                          "were chosen on these very models, so they read them "
                                          "sharper than a new model) or 'split' (aptitude for "
                                          "the model and family splits, which judge onboarded "
                                          "models; bank otherwise)")
    validation_model_share: float = help_field(0.0, "model and family splits: this seeded "
                                               "share of the train models (whole families "
                                               "for split=family) is left out of fitting "
                                               "(bank, pool and loss) and onboarded from its "
                                               "aptitude answers; validation, and so the "
                                               "start, the difficulty weight and the kept "
                                               "router, is then judged on models the router "
                                               "never trained on, as the test models are (0: "
                                               "on the training models; a share of 0.2 read "
                                               "the held-out families worse on five MMLU-Pro "
                                               "family splits: bench/results/capsat_v33/"
                                               "validation_models)")
    pool_without_family: bool = help_field(False, "split=family: each training model is "
                                           "read against a pool without its whole family (in "
                                           "training steps, at validation and in the saved "
                                           "router), as a held-out family is read against a "
                                           "pool with none of its kin (false: without itself "
                                           "only, so a sibling's outcomes sharpen its "
                                           "residuals and the query's difficulty)")
    llm_min_gain_queries: float = help_field(1.0, "a router of the llm stage replaces one "
                                             "kept from the encoder stage only when its "
                                             "selection score is higher by at least this "
                                             "many validation queries' worth (this / the "
                                             "validation queries): the LLM makes scoring "
                                             "hundreds of times slower and must earn it; 0: "
                                             "any gain")
    checkpoint_min_gain_se: float = help_field(0.0, "a validated step replaces the router "
                                               "kept so far only when its selection score "
                                               "is higher by this many paired bootstrap "
                                               "standard errors over the validation queries "
                                               "(0: any gain, the default): 1 keeps the "
                                               "start unless training beats it beyond the "
                                               "noise of validation's few hundred queries")
    checkpoint_margin_counts_selection: bool = help_field(True, "with checkpoint_min_gain_se, "
                                                          "a step is one of every step "
                                                          "validated since the kept router "
                                                          "was set, and the best of many "
                                                          "noisy gains is biased up: its gain "
                                                          "must clear the "
                                                          "Phi(checkpoint_min_gain_se) "
                                                          "quantile of the largest centred "
                                                          "bootstrap gain among them (as "
                                                          "start_margin_counts_selection; "
                                                          "false: that many standard errors "
                                                          "of its own gain)")
    select_on: str = help_field("routing", "checkpoint selection on validation: 'routing' "
                                           "(routed accuracy + query AUC) or 'auc' (pooled)")
    eval_every: int = help_field(250, "validate every N encoder steps (and at the stage's end)")
    llm_eval_every: int = help_field(50, "validate every N LLM steps (and at the end)")
    checkpoint_every: int = help_field(250, "write a resumable checkpoint every N steps")
    output_dir: str = help_field("runs/capsat", "checkpoints, logs and the final router")
    resume: bool = help_field(False, "continue from the last checkpoint in output_dir")
    max_minutes: float = help_field(0.0, "stop training within this many minutes (0: no "
                                         "limit): the last step that fits is validated and "
                                         "checkpointed, and the best router so far is kept")
    progress: bool = help_field(True, "show progress bars")

    @property
    def validation_reads(self) -> str:
        """What the training models read at validation: 'bank', 'aptitude' or 'sampled'."""
        if self.validation_evidence == "split":
            return "aptitude" if self.split in MODEL_SPLITS else "bank"
        return self.validation_evidence

    @property
    def validates_as_onboarded(self) -> bool:
        """Whether validation reads the training models from a few items each, as new ones."""
        return self.validation_reads != "bank"

    def __post_init__(self):
        if self.split not in SPLIT_KINDS:
            raise ValueError(f"split must be one of {SPLIT_KINDS}, got {self.split!r}")
        if self.select_on not in SELECTIONS:
            raise ValueError(f"select_on must be one of {SELECTIONS}, got {self.select_on!r}")
        if self.validation_evidence not in VALIDATION_EVIDENCE:
            raise ValueError(f"validation_evidence must be one of {VALIDATION_EVIDENCE}, got "
                             f"{self.validation_evidence!r}")
        if self.validation_evidence == "sampled" and self.validation_model_share > 0:
            raise ValueError("validation_evidence 'sampled' reads fitted models from bank items; "
                             "validation models (validation_model_share > 0) have only their "
                             "aptitude answers")
        if self.pool_without_family and self.split != "family":
            raise ValueError(f"pool_without_family is for split='family', not "
                             f"split={self.split!r}")
        if any(int(k) < 0 for k in self.start_knn_grid):
            raise ValueError(f"start_knn_grid must hold integers >= 0, got {self.start_knn_grid}")
        if any(float(s) < 0 for s in self.start_prior_shrink_grid):
            raise ValueError(f"start_prior_shrink_grid must hold values >= 0, got "
                             f"{self.start_prior_shrink_grid}")
        if any(float(w) <= 0 for w in self.start_knn_weight_grid):
            raise ValueError(f"start_knn_weight_grid must hold values > 0, got "
                             f"{self.start_knn_weight_grid}")
        if any(float(b) < 0 for b in self.start_difficulty_grid):
            raise ValueError(f"start_difficulty_grid must hold values >= 0, got "
                             f"{self.start_difficulty_grid}")
        if self.start_select_on not in START_SELECTIONS:
            raise ValueError(f"start_select_on must be one of {START_SELECTIONS}, got "
                             f"{self.start_select_on!r}")
        if self.onboarded_start_evidence not in ONBOARDED_START_EVIDENCE:
            raise ValueError(f"onboarded_start_evidence must be one of "
                             f"{ONBOARDED_START_EVIDENCE}, got "
                             f"{self.onboarded_start_evidence!r}")
        if self.onboarded_start_evidence != "none" and (
                not self.onboarded_start_shrink_grid
                or any(float(s) < 0 for s in self.onboarded_start_shrink_grid)):
            raise ValueError(f"onboarded_start_shrink_grid must hold values >= 0, got "
                             f"{self.onboarded_start_shrink_grid}")
        for name in ("start_queries", "difficulty_queries"):
            if getattr(self, name) not in START_QUERIES:
                raise ValueError(f"{name} must be one of {START_QUERIES}, got "
                                 f"{getattr(self, name)!r}")
        if int(self.start_train_queries) < 1:
            raise ValueError(f"start_train_queries must be >= 1, got "
                             f"{self.start_train_queries}")
        if self.start_knn_grid and any(self.start_knn_grid) and not self.start_knn_weight_grid:
            raise ValueError("start_knn_weight_grid is empty while start_knn_grid tries k > 0")
        if not 0.0 <= self.validation_model_share < 1.0:
            raise ValueError(f"validation_model_share must be in [0, 1), got "
                             f"{self.validation_model_share}")
        if self.validation_model_share and self.split not in MODEL_SPLITS:
            raise ValueError(f"validation_model_share is for the model and family splits "
                             f"{MODEL_SPLITS}, not split={self.split!r}")
        if not 0.0 <= self.task_label_share <= 1.0:
            raise ValueError(f"task_label_share must be in [0, 1], got {self.task_label_share}")
        for name in ("encoder_steps", "llm_steps", "max_train_queries",
                     "max_validation_queries", "max_minutes", "pseudo_models",
                     "llm_min_gain_queries", "start_min_gain_se", "checkpoint_min_gain_se",
                     "task_head_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("queries_per_step", "llm_queries_per_step", "eval_every",
                     "llm_eval_every", "checkpoint_every", "k_per_task", "neighbours",
                     "evidence_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.evidence_max < self.evidence_min:
            raise ValueError("evidence_max must be >= evidence_min")
        if not 0.0 <= self.bank_share <= 1.0:
            raise ValueError("bank_share must be in [0, 1]")

    @property
    def total_steps(self) -> int:
        return self.encoder_steps + self.llm_steps

    def stage(self, step: int) -> str:
        """'encoder' for steps [0, encoder_steps), then 'llm'."""
        return "encoder" if step < self.encoder_steps else "llm"
