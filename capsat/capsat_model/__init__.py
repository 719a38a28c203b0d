"""CapSAT: a small instruction LLM reads a candidate's capability soft tokens and an instruction
and answers whether that candidate can handle it."""
from capsat.capsat_model.base_llm import (DEFAULT_BASE_LLM, embedded_gguf_path, load_base_llm,
                                          lora_target_modules, yes_no_token_ids)
from capsat.capsat_model.config import CapsatConfig
from capsat.capsat_model.packing import (PackedBatch, PackedOutput, PackedSequence, collate,
                                         pack, packed_forward)
from capsat.capsat_model.router import Candidate, CapsatRouter

__all__ = ["DEFAULT_BASE_LLM", "Candidate", "CapsatConfig", "CapsatRouter", "PackedBatch",
           "PackedOutput", "PackedSequence", "collate", "embedded_gguf_path", "load_base_llm",
           "lora_target_modules", "pack", "packed_forward", "yes_no_token_ids"]
