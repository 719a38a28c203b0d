"""CapSAT: a small instruction LLM reads a candidate's capability soft tokens and an instruction
and answers whether that candidate can handle it."""
from capsat.capsat_model.base_llm import (DEFAULT_BASE_LLM, embedded_gguf_path, load_base_llm,
                                          lora_target_modules, yes_no_token_ids)
from capsat.capsat_model.packing import (PackedBatch, PackedOutput, PackedSequence, collate,
                                         pack, packed_forward)
