"""Score every candidate model of a query in one forward pass of the base LLM.

One packed sequence per query::

    [instruction (L tokens)] [soft_1 (k) suffix] [soft_2 (k) suffix] ... [soft_C (k) suffix]

A 4D attention mask lets each candidate block see the shared instruction and, causally, its
own block, never another candidate's; every block's position ids continue from L as if it
were the only candidate. So the hidden state at a block's last token (its readout) equals that
of the unpacked sequence [instruction, soft_c, suffix] run alone, while the instruction is
encoded once instead of C times.

Attention implementation: transformers (5.x, ``masking_utils._preprocess_mask_arguments``)
returns a 4D mask unchanged for every implementation; "sdpa" passes it to
``scaled_dot_product_attention`` as ``attn_mask`` with ``is_causal=False`` and "eager" adds it
to the scores, so both are exact (the tests check both). "sdpa" is the default because it is
the faster kernel. Flash-attention kernels take no arbitrary mask and must not be used. The
mask is additive float (0 = attend, dtype min = blocked) rather than boolean because eager
attention adds it to the scores; padding rows attend to themselves so no row is fully blocked
(no NaN in any kernel).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import nn

# The ids at soft-token slots are never read: their embeddings are replaced.
SOFT_PLACEHOLDER_ID = 0
INSTRUCTION_BLOCK = 0
PADDING_BLOCK = -1


@dataclass(frozen=True)
class PackedSequence:
    """One query's packed layout. Block ids: 0 = instruction, c + 1 = candidate c."""

    input_ids: torch.Tensor  # (T,) long, SOFT_PLACEHOLDER_ID at soft slots
    position_ids: torch.Tensor  # (T,) long
    block_ids: torch.Tensor  # (T,) long
    soft_positions: torch.Tensor  # (n_candidates, n_soft) long
    readout_positions: torch.Tensor  # (n_candidates,) long: last token of each block
    instruction_length: int

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_candidates(self) -> int:
        return int(self.soft_positions.shape[0])

    @property
    def n_soft(self) -> int:
        return int(self.soft_positions.shape[1])


def pack(instruction_ids: Sequence[int], n_candidates: int, n_soft: int,
         suffix_ids: Sequence[int]) -> PackedSequence:
    """Lay out one query: the instruction once, then one [soft slots, suffix] block per
    candidate."""
    instruction_ids = [int(i) for i in instruction_ids]
    suffix_ids = [int(i) for i in suffix_ids]
    if not instruction_ids:
        raise ValueError("instruction_ids is empty: the candidates need an instruction to read")
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    if n_soft < 0:
        raise ValueError(f"n_soft must be >= 0, got {n_soft}")
    block_length = n_soft + len(suffix_ids)
    if block_length == 0:
        raise ValueError("a candidate block needs at least one soft slot or suffix token")

    length = len(instruction_ids)
    block = [SOFT_PLACEHOLDER_ID] * n_soft + suffix_ids
    input_ids = instruction_ids + block * n_candidates
    position_ids = list(range(length)) + list(range(length, length + block_length)) * n_candidates
    block_ids = [INSTRUCTION_BLOCK] * length + [c + 1 for c in range(n_candidates)
                                                for _ in range(block_length)]
    starts = torch.arange(n_candidates) * block_length + length
    return PackedSequence(
        input_ids=torch.tensor(input_ids, dtype=torch.long),
        position_ids=torch.tensor(position_ids, dtype=torch.long),
        block_ids=torch.tensor(block_ids, dtype=torch.long),
        soft_positions=starts[:, None] + torch.arange(n_soft)[None, :],
        readout_positions=starts + block_length - 1,
        instruction_length=length,
    )


@dataclass
class PackedBatch:
    """Right-padded packed sequences of B queries with the same candidate count and k."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, 1, T, T) float: 0 = attend, dtype min = blocked
    position_ids: torch.Tensor  # (B, T) long
    block_ids: torch.Tensor  # (B, T) long, PADDING_BLOCK at padding
    soft_positions: torch.Tensor  # (B, n_candidates, n_soft) long
    readout_positions: torch.Tensor  # (B, n_candidates) long
    instruction_last: torch.Tensor  # (B,) long: index of the instruction's last token
    lengths: torch.Tensor  # (B,) long: unpadded lengths

    def to(self, device: torch.device | str) -> "PackedBatch":
        return PackedBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def attention_allowed(block_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (B, T, T) mask, True where query i may attend to key j.

    Causal, and a key is visible when it is in the instruction or in the query's own block;
    padding keys are invisible and a padding query sees only itself.
    """
    t = block_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=block_ids.device).tril()
    query_block = block_ids[:, :, None]
    key_block = block_ids[:, None, :]
    real_query = query_block != PADDING_BLOCK
    real_key = key_block != PADDING_BLOCK
    visible = (key_block == INSTRUCTION_BLOCK) | (key_block == query_block)
    allowed = causal & visible & real_query & real_key
    eye = torch.eye(t, dtype=torch.bool, device=block_ids.device)
    return allowed | (eye & ~real_query)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, T) boolean -> (B, 1, T, T) additive float mask in ``dtype``."""
    blocked = torch.finfo(dtype).min
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.full((), blocked, dtype=dtype,
                                                 device=allowed.device))[:, None]


def collate(packed: Sequence[PackedSequence], pad_id: int,
            dtype: torch.dtype = torch.float32) -> PackedBatch:
    """Right-pad packed sequences into a batch and build its 4D additive mask in ``dtype``."""
    if not packed:
        raise ValueError("collate() needs at least one packed sequence")
    shapes = {(p.n_candidates, p.n_soft) for p in packed}
    if len(shapes) != 1:
        raise ValueError(f"all queries of a batch need the same (n_candidates, n_soft), got "
                         f"{sorted(shapes)}")
    batch, width = len(packed), max(p.length for p in packed)
    input_ids = torch.full((batch, width), int(pad_id), dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    block_ids = torch.full((batch, width), PADDING_BLOCK, dtype=torch.long)
    for row, p in enumerate(packed):
        input_ids[row, :p.length] = p.input_ids
        position_ids[row, :p.length] = p.position_ids
        block_ids[row, :p.length] = p.block_ids
    return PackedBatch(
        input_ids=input_ids,
        attention_mask=additive_mask(attention_allowed(block_ids), dtype),
        position_ids=position_ids,
        block_ids=block_ids,
        soft_positions=torch.stack([p.soft_positions for p in packed]),
        readout_positions=torch.stack([p.readout_positions for p in packed]),
        instruction_last=torch.tensor([p.instruction_length - 1 for p in packed]),
        lengths=torch.tensor([p.length for p in packed]),
    )


@dataclass
class PackedOutput:
    logits: torch.Tensor  # (B, n_candidates, vocab) or (B, n_candidates, len(select_token_ids))
    readout_hidden: torch.Tensor | None = None  # (B, n_candidates, d), last layer, final norm
    instruction_hidden: torch.Tensor | None = None  # (B, d) at the instruction's last token


def _gather_rows(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, d), positions (B, ...) -> (B, ..., d)."""
    flat = positions.reshape(positions.shape[0], -1)
    picked = hidden.gather(1, flat[..., None].expand(-1, -1, hidden.shape[-1]))
    return picked.reshape(*positions.shape, hidden.shape[-1])


def _output_logits(model: nn.Module, hidden: torch.Tensor,
                   select_token_ids: Sequence[int] | None) -> torch.Tensor:
    head = model.get_output_embeddings()
    if select_token_ids is not None and type(head) is nn.Linear:
        # Only the selected vocabulary rows: 2 instead of ~50k dot products per readout.
        ids = torch.as_tensor(list(select_token_ids), dtype=torch.long, device=hidden.device)
        bias = head.bias[ids] if head.bias is not None else None
        logits = nn.functional.linear(hidden, head.weight[ids], bias)
    else:
        logits = head(hidden)
        if select_token_ids is not None:
            logits = logits[..., list(select_token_ids)]
    # Heads that post-process their logits in the CausalLM forward we bypass (gemma2/3, granite).
    config = model.config
    scaling = getattr(config, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def packed_forward(model: nn.Module, batch: PackedBatch, soft_embeddings: torch.Tensor, *,
                   select_token_ids: Sequence[int] | None = None,
                   output_hidden_states: bool = False) -> PackedOutput:
    """Run the packed batch; return logits at each candidate's readout position.

    ``soft_embeddings`` (B, n_candidates, n_soft, d) replace the input embeddings at the soft
    slots (gradients flow to them). ``select_token_ids`` keeps only those vocabulary columns,
    e.g. ``yes_no_token_ids(tokenizer)``: P(Yes) = sigmoid(logits[..., 0] - logits[..., 1]).
    ``output_hidden_states`` also returns the last-layer hidden states at the readouts and at
    the instruction's last token. ``model`` is a CausalLM, optionally PEFT-wrapped.
    """
    batch_size, n_candidates, n_soft = batch.soft_positions.shape
    embed = model.get_input_embeddings()
    inputs_embeds = embed(batch.input_ids)
    dim = inputs_embeds.shape[-1]
    expected = (batch_size, n_candidates, n_soft, dim)
    if tuple(soft_embeddings.shape) != expected:
        raise ValueError(f"soft_embeddings has shape {tuple(soft_embeddings.shape)}, expected "
                         f"{expected} (batch, candidates, soft tokens, hidden size)")
    if n_soft:
        slots = batch.soft_positions.reshape(batch_size, -1, 1).expand(-1, -1, dim)
        inputs_embeds = inputs_embeds.scatter(
            1, slots, soft_embeddings.reshape(batch_size, -1, dim).to(inputs_embeds.dtype))

    mask = batch.attention_mask
    if mask.dtype != inputs_embeds.dtype:
        mask = additive_mask(mask[:, 0] == 0, inputs_embeds.dtype)
    decoder = model.get_decoder()
    hidden = decoder(inputs_embeds=inputs_embeds, attention_mask=mask,
                     position_ids=batch.position_ids, use_cache=False).last_hidden_state
    readout_hidden = _gather_rows(hidden, batch.readout_positions)
    logits = _output_logits(model, readout_hidden, select_token_ids)
    if not output_hidden_states:
        return PackedOutput(logits=logits)
    instruction_hidden = _gather_rows(hidden, batch.instruction_last[:, None])[:, 0]
    return PackedOutput(logits=logits, readout_hidden=readout_hidden,
                        instruction_hidden=instruction_hidden)
