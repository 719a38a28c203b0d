"""Training configuration for CapSAT (the model's own architecture is ``CapsatConfig``).

Both dataclasses are read together from a YAML file (``--config``) and overridden on the
command line (``--lr_lora 1e-4``), through trl's ``TrlParser``.
"""
from __future__ import annotations

from dataclasses import dataclass

from capsat.routers.base import help_field
from data_builders.splits import SPLIT_KINDS


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
    k_per_task: int = help_field(10, "aptitude-test core items per task")
    keywords: int = help_field(5, "keywords per task in the model representations")
    kshot: int = help_field(4, "queries per listwise group: 1 the group's model got right, "
                               "k-1 it got wrong")
    max_train_queries: int = help_field(0, "train on at most this many train queries (a seeded "
                                           "sample; 0 = all)")
    max_validation_queries: int = help_field(300, "validate on at most this many validation "
                                                  "queries (a seeded sample; 0 = all)")
    stage1_steps: int = help_field(60, "steps training the connector and IRT heads only")
    stage2_steps: int = help_field(240, "further steps training LoRA and heads together")
    groups_per_step: int = help_field(1, "listwise groups per optimiser step (per process)")
    lr_heads: float = help_field(1e-3, "learning rate of the connector and IRT heads")
    lr_lora: float = help_field(2e-4, "learning rate of the LoRA weights (stage 2)")
    weight_decay: float = help_field(0.0, "AdamW weight decay")
    weight_pointwise: float = help_field(1.0, "weight of the Yes/No cross-entropy on every "
                                              "(query, candidate) pair of the group")
    weight_listwise: float = help_field(0.5, "weight of the Model-SAT listwise loss: which of "
                                             "the group's queries did its model get right")
    weight_across_models: float = help_field(0.0, "weight of the per-query softmax over the "
                                                  "candidates, toward the ones that got it "
                                                  "right: the comparison routing makes")
    weight_irt: float = help_field(0.3, "weight of the IRT auxiliary loss")
    eval_every: int = help_field(50, "validate (AUC, log-loss) every N steps and at the end")
    checkpoint_every: int = help_field(25, "write a resumable checkpoint every N steps")
    output_dir: str = help_field("runs/capsat", "checkpoints, logs and the final router")
    resume: bool = help_field(False, "continue from the last checkpoint in output_dir")
    max_minutes: float = help_field(0.0, "stop training within this many minutes (0: no "
                                         "limit): the last step that fits is validated and "
                                         "checkpointed, and the best router so far is kept")
    progress: bool = help_field(True, "show progress bars")

    def __post_init__(self):
        if self.split not in SPLIT_KINDS:
            raise ValueError(f"split must be one of {SPLIT_KINDS}, got {self.split!r}")
        if self.kshot < 2:
            raise ValueError("kshot must be >= 2")
        for name in ("stage1_steps", "stage2_steps", "max_train_queries",
                     "max_validation_queries", "max_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("groups_per_step", "eval_every", "checkpoint_every", "k_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps
