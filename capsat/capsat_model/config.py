"""Configuration of the CapSAT router model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from data_builders.embeddings import DEFAULT_ENCODER

from ..routers.base import RouterConfig, help_field

#: The embedded SmolLM2-135M-Instruct (``base_llm.load_base_llm`` converts and caches it).
DEFAULT_BASE_LLM = "smollm2-135m-instruct"

# The candidate's soft tokens come *after* the instruction (not before it, as in Model-SAT's
# prompt) so that the instruction is a prefix shared by every candidate and is encoded once.
DEFAULT_INQUIRY = ("Can the following model answer this instruction correctly? "
                   "Answer Yes or No.\nModel:")
QUANTIZATIONS = ("none", "4bit")


@dataclass
class CapsatConfig(RouterConfig):
    """Architecture of a CapSAT router. Saved as ``config.json``; every field is required on
    load, except those added since v3.2, which a router saved before them never used."""

    behaviour_before: ClassVar[dict] = {"difficulty_k": 0, "difficulty_weight": 0.0,
                                        "start_prior_shrink": 0.0, "onboarded_start": None,
                                        "difficulty_ridge": 0.0,
                                        "onboarded_difficulty_weight": None,
                                        "shared_difficulty": False}

    base_model: str = help_field(DEFAULT_BASE_LLM, "base instruction LLM: the embedded "
                                 "SmolLM2-135M-Instruct, a local path or a hub id")
    quantization: str = help_field("none", "'4bit': load the base LLM in 4 bits with "
                                   "bitsandbytes (QLoRA: a 1-2B base on one GPU; needs CUDA and "
                                   "the gpu extra); 'none': full precision")
    use_llm: bool = help_field(True, "read P(correct) through the LLM (soft tokens, Yes/No); "
                               "false: the capability encoder's direct logit alone (an "
                               "ablation, and no LLM to load)")
    capability_encoder: str = help_field(DEFAULT_ENCODER, "sentence encoder of instructions "
                                         "and evidence items (the embedded all-MiniLM-L6-v2)")
    encoder_heads: int = help_field(4, "learned attention heads from the instruction over a "
                                    "candidate's evidence items")
    encoder_cosine_heads: int = help_field(2, "heads on the plain cosine of the sentence "
                                           "embeddings (a kernel kNN), sharpness learned")
    encoder_head_dim: int = help_field(32, "width of each learned head")
    encoder_knn: list[int] = help_field([10, 40], "k of the hard kNN features over the evidence")
    start_knn: int = help_field(0, "the direct logit starts at the candidate's mean outcome "
                                "on its this many evidence items most similar to the "
                                "instruction, shrunk toward its per-task accuracy (0: the "
                                "per-task accuracy alone); training picks it on validation")
    start_knn_weight: float = help_field(4.0, "pseudo-count of the per-task accuracy in that "
                                         "start")
    start_prior_shrink: float = help_field(0.0, "the start's per-task accuracy: 0, the "
                                           "candidate's on the task shrunk toward its overall "
                                           "accuracy by 2 pseudo-counts; > 0, the pool's "
                                           "success on the task plus the candidate's residual "
                                           "there shrunk toward its overall residual by this "
                                           "many (a new model's 10 items per task then say "
                                           "little; training picks it on validation)")
    onboarded_start: list[float] | None = help_field(None, "[start_knn, start_knn_weight, "
                                              "start_prior_shrink] of the candidates read "
                                              "from a few items (onboarded models: their "
                                              "aptitude answers); None: they start as the "
                                              "known models do; training picks it on "
                                              "validation that reads the training models "
                                              "as onboarded")
    difficulty_k: int = help_field(20, "the encoder reads the query's difficulty: the "
                                   "training pool's success on its this many most similar "
                                   "bank items, against its task's (the same for every "
                                   "candidate, new or known; 0: off)")
    difficulty_ridge: float = help_field(0.0, "the query's difficulty is also read by a ridge "
                                         "regression (this penalty) of the training pool's "
                                         "success on the bank items, net of their task's, on "
                                         "their sentence embeddings, and is the mean of that "
                                         "and the kNN's (0: the kNN's alone; needs "
                                         "difficulty_k)")
    difficulty_weight: float = help_field(0.0, "the direct logit's start moves by this times "
                                          "that difficulty (a calibration that changes no "
                                          "routing); training picks it on validation log-loss")
    shared_difficulty: bool = help_field(True, "the start moves by the query's difficulty "
                                         "for the whole training pool, the same for every "
                                         "candidate of the query (a calibration that changes "
                                         "no routing); false: each candidate's own, read "
                                         "against the pool without itself, which reads a "
                                         "known model's local strength as difficulty and "
                                         "moves the candidates of a query apart (routers "
                                         "saved before this field)")
    onboarded_difficulty_weight: float | None = help_field(
        None, "that weight for the candidates read from a few items (onboarded models): "
        "their per-task accuracy on 10 items a task says less of the query than a bank does, "
        "so the difficulty can say more; None: difficulty_weight; training picks it on "
        "validation log-loss that reads the training models as onboarded")
    encoder_hidden: int = help_field(128, "hidden width of the encoder's MLP")
    capability_dim: int = help_field(128, "width of the capability vector (conditioned on the "
                                     "instruction) that becomes the soft tokens")
    encoder_dropout: float = help_field(0.1, "dropout in the encoder's MLP while training")
    read_task_labels: bool = help_field(True, "read an instruction's task label where it "
                                        "has one, as the per-task routers do (logs without "
                                        "one get the task head's posterior); false: always "
                                        "the posterior")
    max_evidence: int = help_field(0, "a known model's evidence at inference: at most this "
                                   "many of its bank items (a seeded sample; 0 = all)")
    n_soft_tokens: int = help_field(2, "capability soft tokens per candidate")
    connector_hidden: int = help_field(256, "hidden width of the connector MLP")
    lora_r: int = help_field(8, "LoRA rank")
    lora_alpha: int = help_field(16, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = help_field(0.0, "dropout on the LoRA branch")
    lora_include_mlp: bool = help_field(False, "also adapt the MLP projections, not only "
                                        "attention")
    irt_dim: int = help_field(8, "dimension of the IRT ability / discrimination vectors")
    max_instruction_tokens: int = help_field(128, "instructions longer than this many tokens "
                                             "keep their first head tokens and their last "
                                             "tokens (the answer options of a multiple-choice "
                                             "question sit at the end)")
    instruction_head_tokens: int = help_field(64, "of those, how many come from the start")
    inquiry_prompt: str = help_field(DEFAULT_INQUIRY, "performance-inquiry text between the "
                                     "instruction and the candidate's soft tokens")
    predict_batch_size: int = help_field(8, "queries per forward pass when routing")

    def __post_init__(self):
        for name in ("n_soft_tokens", "connector_hidden", "lora_r", "irt_dim", "encoder_hidden",
                     "capability_dim", "encoder_head_dim", "max_instruction_tokens",
                     "predict_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CapsatConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.start_prior_shrink < 0:
            raise ValueError(f"CapsatConfig.start_prior_shrink must be >= 0, got "
                             f"{self.start_prior_shrink}")
        if self.difficulty_ridge < 0:
            raise ValueError(f"CapsatConfig.difficulty_ridge must be >= 0, got "
                             f"{self.difficulty_ridge}")
        if self.difficulty_ridge and not self.difficulty_k:
            raise ValueError("CapsatConfig.difficulty_ridge needs difficulty_k > 0 (the ridge "
                             "reading is averaged with the kNN's)")
        if self.start_knn_weight <= 0:
            raise ValueError(f"CapsatConfig.start_knn_weight must be > 0, got "
                             f"{self.start_knn_weight}")
        for name in ("encoder_heads", "encoder_cosine_heads", "max_evidence", "start_knn",
                     "difficulty_k"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"CapsatConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.onboarded_start is not None:
            start = list(self.onboarded_start)
            if (len(start) != 3 or int(start[0]) != start[0] or start[0] < 0
                    or start[1] <= 0 or start[2] < 0):
                raise ValueError(f"CapsatConfig.onboarded_start must be [start_knn >= 0 "
                                 f"(an integer), start_knn_weight > 0, start_prior_shrink >= "
                                 f"0] or None, got {self.onboarded_start}")
            self.onboarded_start = [int(start[0]), float(start[1]), float(start[2])]
        if self.encoder_heads + self.encoder_cosine_heads < 1:
            raise ValueError("CapsatConfig needs at least one attention head")
        if not 0 <= self.instruction_head_tokens <= self.max_instruction_tokens:
            raise ValueError("CapsatConfig.instruction_head_tokens must be in [0, "
                             "max_instruction_tokens]")
        if not self.encoder_knn or any(int(k) < 1 for k in self.encoder_knn):
            raise ValueError(f"CapsatConfig.encoder_knn must hold positive integers, got "
                             f"{self.encoder_knn}")
        for name in ("lora_dropout", "encoder_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"CapsatConfig.{name} must be in [0, 1), got "
                                 f"{getattr(self, name)}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"CapsatConfig.quantization must be one of {QUANTIZATIONS}, got "
                             f"{self.quantization!r}")
