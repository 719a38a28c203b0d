"""Configuration of the CapSAT router model."""
from __future__ import annotations

from dataclasses import dataclass

from data_builders.embeddings import DEFAULT_ENCODER

from ..routers.base import RouterConfig, help_field

#: The embedded SmolLM2-135M-Instruct (``base_llm.load_base_llm`` converts and caches it).
DEFAULT_BASE_LLM = "smollm2-135m-instruct"

# The candidate's soft tokens come *after* the instruction (not before it, as in Model-SAT's
# prompt) so that the instruction is a prefix shared by every candidate and is encoded once.
DEFAULT_INQUIRY = ("Can the following model answer this instruction correctly? "
                   "Answer Yes or No.\nModel:")


@dataclass
class CapsatConfig(RouterConfig):
    """Architecture of a CapSAT router. Saved as ``config.json``; every field is required on
    load."""

    base_model: str = help_field(DEFAULT_BASE_LLM, "base instruction LLM: the embedded "
                                 "SmolLM2-135M-Instruct, a local path or a hub id")
    capability_encoder: str = help_field(DEFAULT_ENCODER, "sentence encoder of the model "
                                         "representations (the embedded all-MiniLM-L6-v2 by "
                                         "default)")
    use_aptitude_vector: bool = help_field(True, "append the per-task aptitude accuracies to the "
                                           "encoded representation (sentence encoders read "
                                           "numbers poorly)")
    n_soft_tokens: int = help_field(2, "capability soft tokens per candidate")
    connector_hidden: int = help_field(256, "hidden width of the connector MLP")
    lora_r: int = help_field(8, "LoRA rank")
    lora_alpha: int = help_field(16, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = help_field(0.0, "dropout on the LoRA branch")
    lora_include_mlp: bool = help_field(False, "also adapt the MLP projections, not only "
                                        "attention")
    irt_dim: int = help_field(16, "dimension of the IRT ability / discrimination vectors")
    max_instruction_tokens: int = help_field(96, "instructions are cut to their first N tokens")
    inquiry_prompt: str = help_field(DEFAULT_INQUIRY, "performance-inquiry text between the "
                                     "instruction and the candidate's soft tokens")
    predict_batch_size: int = help_field(8, "queries per forward pass when routing")

    def __post_init__(self):
        for name in ("n_soft_tokens", "connector_hidden", "lora_r", "irt_dim",
                     "max_instruction_tokens", "predict_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CapsatConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"CapsatConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
