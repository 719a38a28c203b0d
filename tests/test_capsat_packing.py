"""Packed scoring of all candidates in one forward pass equals scoring each one alone.

A tiny llama built from a config (2 layers, hidden 64, vocab 300) reads real MMLU-Pro
questions as UTF-8 byte ids; the slow test repeats the key check on the real SmolLM2.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from capsat.capsat_model.base_llm import (
    DEFAULT_BASE_LLM,
    default_cache_dir,
    load_base_llm,
    lora_target_modules,
    yes_no_token_ids,
)
from capsat.capsat_model.packing import (
    PADDING_BLOCK,
    SOFT_PLACEHOLDER_ID,
    collate,
    pack,
    packed_forward,
)

N_SOFT = 3
SUFFIX = list(b"\nAnswer:")
PAD_ID = 299


def tiny_llama(attn_implementation: str = "sdpa") -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=PAD_ID)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                            dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def instructions(mmlu_pro) -> list[list[int]]:
    """Real questions as byte ids, of different lengths (so batches need padding)."""
    questions = list(mmlu_pro.queries["query"][:3])
    return [list(q.encode("utf-8"))[:n] for q, n in zip(questions, (40, 23, 57))]


def soft_tokens(n_candidates: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_candidates, N_SOFT, dim, generator=generator) * 0.5


def unpacked_run(model, instruction: list[int], soft: torch.Tensor, suffix: list[int]):
    """[instruction, soft, suffix] alone, plain causal attention: (last logits, hidden states)."""
    embed = model.get_input_embeddings()
    parts = [embed(torch.tensor(instruction)), soft, embed(torch.tensor(suffix))]
    inputs = torch.cat(parts)[None]
    out = model(inputs_embeds=inputs, output_hidden_states=True)
    return out.logits[0, -1], out.hidden_states[-1][0]


def test_pack_layout():
    packed = pack([11, 12, 13], n_candidates=2, n_soft=2, suffix_ids=[7, 8])
    p = SOFT_PLACEHOLDER_ID
    assert packed.input_ids.tolist() == [11, 12, 13, p, p, 7, 8, p, p, 7, 8]
    assert packed.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6]
    assert packed.block_ids.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert packed.soft_positions.tolist() == [[3, 4], [7, 8]]
    assert packed.readout_positions.tolist() == [6, 10]
    with pytest.raises(ValueError, match="instruction"):
        pack([], n_candidates=2, n_soft=2, suffix_ids=[7])
    with pytest.raises(ValueError, match="at least one"):
        pack([1], n_candidates=2, n_soft=0, suffix_ids=[])


def test_mask_blocks_other_candidates_and_padding():
    batch = collate([pack([1, 2, 3], 2, 1, [5]), pack([1], 2, 1, [5])], pad_id=PAD_ID)
    mask = batch.attention_mask
    assert mask.shape == (2, 1, 7, 7) and mask.dtype == torch.float32
    allowed = mask[:, 0] == 0
    blocked = torch.finfo(torch.float32).min
    assert set(mask.unique().tolist()) == {0.0, blocked}
    # Row 0: candidate 2's readout (index 6) sees the instruction and its own block only.
    assert allowed[0, 6].tolist() == [True, True, True, False, False, True, True]
    # Candidate 1's tokens never see candidate 2's, even their earlier ones.
    assert not allowed[0, 3:5, 5:7].any()
    # Row 1 is 5 tokens long: its padding keys are invisible, padding rows see only themselves.
    assert batch.block_ids[1, 5:].tolist() == [PADDING_BLOCK] * 2
    assert not allowed[1, :5, 5:].any()
    assert allowed[1, 5].tolist() == [False] * 5 + [True, False]
    assert batch.input_ids[1, 5:].tolist() == [PAD_ID] * 2
    with pytest.raises(ValueError, match="same"):
        collate([pack([1], 2, 1, [5]), pack([1], 3, 1, [5])], pad_id=PAD_ID)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_equals_each_candidate_alone(instructions, attn_implementation):
    model = tiny_llama(attn_implementation)
    instruction, n_candidates = instructions[0], 4
    soft = soft_tokens(n_candidates, 64, seed=1)
    batch = collate([pack(instruction, n_candidates, N_SOFT, SUFFIX)], pad_id=PAD_ID)
    with torch.no_grad():
        out = packed_forward(model, batch, soft[None], output_hidden_states=True)
        assert out.logits.shape == (1, n_candidates, 300)
        for c in range(n_candidates):
            logits, hidden = unpacked_run(model, instruction, soft[c], SUFFIX)
            torch.testing.assert_close(out.logits[0, c], logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.readout_hidden[0, c], hidden[-1], rtol=1e-5,
                                       atol=1e-5)
            torch.testing.assert_close(out.instruction_hidden[0],
                                       hidden[len(instruction) - 1], rtol=1e-5, atol=1e-5)
        # Candidates differ only by their soft tokens, and that shows in their logits.
        assert (out.logits[0, 0] - out.logits[0, 1]).abs().max() > 1e-3


def test_candidates_do_not_influence_each_other(instructions):
    model = tiny_llama()
    soft = soft_tokens(4, 64, seed=2)
    changed = soft.clone()
    changed[2] = soft_tokens(1, 64, seed=3)[0]
    batch = collate([pack(instructions[1], 4, N_SOFT, SUFFIX)], pad_id=PAD_ID)
    with torch.no_grad():
        before = packed_forward(model, batch, soft[None]).logits[0]
        after = packed_forward(model, batch, changed[None]).logits[0]
    for c in (0, 1, 3):
        torch.testing.assert_close(after[c], before[c], rtol=1e-6, atol=1e-6)
    assert (after[2] - before[2]).abs().max() > 1e-3


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_padded_batch_equals_one_query_at_a_time(instructions, attn_implementation):
    model = tiny_llama(attn_implementation)
    n_candidates = 3
    softs = [soft_tokens(n_candidates, 64, seed=10 + i) for i in range(len(instructions))]
    packed = [pack(ins, n_candidates, N_SOFT, SUFFIX) for ins in instructions]
    batch = collate(packed, pad_id=PAD_ID)
    assert len(set(batch.lengths.tolist())) == 3
    yes_no = (ord("Y"), ord("N"))
    with torch.no_grad():
        together = packed_forward(model, batch, torch.stack(softs), select_token_ids=yes_no,
                                  output_hidden_states=True)
        # Padding rows are computed too: none of them may produce NaN.
        full = model.get_decoder()(inputs_embeds=model.get_input_embeddings()(batch.input_ids),
                                   attention_mask=batch.attention_mask,
                                   position_ids=batch.position_ids).last_hidden_state
        assert torch.isfinite(full).all()
        for row, (p, soft) in enumerate(zip(packed, softs)):
            alone = packed_forward(model, collate([p], pad_id=PAD_ID), soft[None],
                                   output_hidden_states=True)
            # The selected-rows head equals slicing the full-vocabulary logits.
            torch.testing.assert_close(together.logits[row], alone.logits[0][:, list(yes_no)],
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(together.instruction_hidden[row],
                                       alone.instruction_hidden[0], rtol=1e-5, atol=1e-5)


def test_gradients_reach_only_the_own_soft_tokens(instructions):
    model = tiny_llama()
    soft = soft_tokens(3, 64, seed=4)[None].requires_grad_(True)
    batch = collate([pack(instructions[2], 3, N_SOFT, SUFFIX)], pad_id=PAD_ID)
    logits = packed_forward(model, batch, soft, select_token_ids=(ord("Y"), ord("N"))).logits
    (logits[0, 1, 0] - logits[0, 1, 1]).backward()
    grad_norms = soft.grad[0].flatten(1).norm(dim=1)
    assert grad_norms[1] > 0
    assert grad_norms[0] == 0 and grad_norms[2] == 0


def test_soft_embedding_shape_is_checked(instructions):
    model = tiny_llama()
    batch = collate([pack(instructions[0], 2, N_SOFT, SUFFIX)], pad_id=PAD_ID)
    with pytest.raises(ValueError, match="expected"):
        packed_forward(model, batch, torch.zeros(1, 3, N_SOFT, 64))


def test_lora_target_modules_exist_and_train(instructions):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()
    assert lora_target_modules(model) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    targets = lora_target_modules(model, include_mlp=True)
    assert targets[4:] == ["gate_proj", "up_proj", "down_proj"]
    batch = collate([pack(instructions[0], 2, N_SOFT, SUFFIX)], pad_id=PAD_ID)
    soft = soft_tokens(2, 64, seed=5)[None]
    with torch.no_grad():
        base_logits = packed_forward(model, batch, soft).logits
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    # Two LoRA matrices per target per layer.
    assert len(trainable) == 2 * len(targets) * 2
    assert lora_target_modules(peft_model) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    # The packed forward runs through the PEFT wrapper: LoRA starts as the identity (B = 0)
    # and the loss reaches every LoRA B matrix.
    logits = packed_forward(peft_model, batch, soft).logits
    torch.testing.assert_close(logits, base_logits, rtol=1e-5, atol=1e-5)
    logits[0, :, 0].sum().backward()
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == len(targets) * 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


def test_lora_target_modules_rejects_missing_names():
    class Renamed(nn.Module):
        config = LlamaConfig(vocab_size=300, hidden_size=64)

        def __init__(self):
            super().__init__()
            self.query = nn.Linear(4, 4)

    with pytest.raises(ValueError, match=r"match no linear layer.*\['query'\]"):
        lora_target_modules(Renamed())
    Renamed.config = LlamaConfig(vocab_size=300, hidden_size=64)
    Renamed.config.model_type = "no-such-architecture"
    with pytest.raises(ValueError, match="no LoRA target table"):
        lora_target_modules(Renamed())


@pytest.mark.slow
def test_real_smollm2_packed_equals_unpacked(mmlu_pro, monkeypatch):
    from capsat.capsat_model import base_llm

    model, tokenizer = load_base_llm(DEFAULT_BASE_LLM)
    assert (default_cache_dir() / "model.safetensors").is_file()
    # A second load reads the cache: converting again would fail here.
    monkeypatch.setattr(base_llm, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    model, tokenizer = load_base_llm(DEFAULT_BASE_LLM)
    assert model.config.model_type == "llama" and tokenizer.pad_token_id is not None
    assert lora_target_modules(model) == ["q_proj", "k_proj", "v_proj", "o_proj"]

    yes_id, no_id = yes_no_token_ids(tokenizer)
    assert tokenizer.decode([yes_id]).strip() == "Yes"
    assert tokenizer.decode([no_id]).strip() == "No"

    question = mmlu_pro.queries["query"].iloc[0]
    instruction = tokenizer.encode(question, add_special_tokens=False)[:48]
    suffix = tokenizer.encode("\nAnswer:", add_special_tokens=False)
    dim = model.config.hidden_size
    embed = model.get_input_embeddings().weight
    # Soft tokens at the scale of real token embeddings.
    soft = embed[torch.tensor([[100, 200], [300, 400], [500, 600]])].detach()
    batch = collate([pack(instruction, 3, 2, suffix)], pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        out = packed_forward(model, batch, soft[None], select_token_ids=(yes_id, no_id))
        assert out.logits.shape == (1, 3, 2)
        for c in range(3):
            logits, _ = unpacked_run(model, instruction, soft[c], suffix)
            torch.testing.assert_close(out.logits[0, c], logits[[yes_id, no_id]],
                                       rtol=1e-4, atol=1e-4)
    assert soft.shape[-1] == dim
