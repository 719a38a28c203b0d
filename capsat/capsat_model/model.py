"""The CapSAT network: LoRA-tuned LLM + model-capability encoder + IRT heads.

For one query and M candidates, one packed forward pass reads

    [prompt head, instruction (cut to N tokens), inquiry, answer opening] [soft tokens of c]

for every c at once (see ``packing``), and P(candidate c answers correctly) = softmax over the
{Yes, No} logits at candidate c's last soft token. Under a chat template the answer opening is
the assistant turn's header, inside the shared prefix; without one it is "Answer:". Nothing
follows the soft tokens, so 29 candidates cost 29 x k extra tokens. The candidate's soft tokens come from the
connector MLP applied to its capability features: the sentence embedding of its model
representation (Model-SAT aptitude results as text), optionally joined by the raw per-task
aptitude accuracies.

IRT heads (auxiliary, as in IrtNet): ability theta_m from the capability features;
discrimination a_q (softplus, so ability reads as ability) and difficulty b_q from the LLM's
last hidden state at the instruction's last token; P_irt = sigmoid(a_q . theta_m - b_q).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .base_llm import lora_target_modules, yes_no_token_ids
from .config import CapsatConfig
from .packing import PackedBatch, collate, pack, packed_forward

_INSTRUCTION = "\x00INSTRUCTION\x00"
_SOFT = "\x00SOFT\x00"


@dataclass
class CapsatOutput:
    logits: torch.Tensor  # (B, M) Yes-minus-No logit: P(correct) = sigmoid(logits)
    irt_logits: torch.Tensor  # (B, M) a_q . theta_m - b_q
    ability: torch.Tensor  # (M, D)
    discrimination: torch.Tensor  # (B, D)
    difficulty: torch.Tensor  # (B,)


def prompt_pieces(tokenizer, inquiry: str) -> tuple[list[int], list[int], list[int]]:
    """Token ids before the instruction, between instruction and soft tokens, and after them.

    Uses the tokenizer's chat template when it has one (the user turn holds instruction and
    inquiry; the assistant turn's opening ends the shared prefix), else plain text. The last
    piece is empty in both layouts: the answer is read at the candidate's last soft token.
    """
    content = f"{_INSTRUCTION}\n\n{inquiry}"
    text = None
    if getattr(tokenizer, "chat_template", None):
        # An empty system turn keeps templates from adding their long default system prompt;
        # templates that refuse a system turn get the user turn alone.
        for messages in ([{"role": "system", "content": ""}, {"role": "user", "content": content}],
                         [{"role": "user", "content": content}]):
            try:
                text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=True)
                break
            except Exception as err:  # noqa: BLE001 - jinja templates raise anything
                failure = err
        if text is None:
            raise ValueError(f"the tokenizer's chat template failed: {failure}")
    else:
        text = content + "\nAnswer:"
    # The soft tokens come last, so a candidate's block is its k soft tokens alone and the
    # answer is read at the last of them: 29 candidates cost 29 * k extra tokens.
    text += _SOFT
    head, rest = text.split(_INSTRUCTION)
    middle, tail = rest.split(_SOFT)

    def ids(piece: str) -> list[int]:
        return tokenizer.encode(piece, add_special_tokens=False) if piece else []

    # A BOS token, if the tokenizer uses one, starts the sequence.
    bos = [tokenizer.bos_token_id] if (getattr(tokenizer, "add_bos_token", False)
                                       and tokenizer.bos_token_id is not None) else []
    return bos + ids(head), ids(middle), ids(tail)


class CapsatNetwork(nn.Module):
    """Trainable parts (LoRA, connector, IRT heads) around a frozen base LLM."""

    def __init__(self, config: CapsatConfig, llm: nn.Module, tokenizer, capability_dim: int):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.config = config
        self.tokenizer = tokenizer
        self.capability_dim = capability_dim
        hidden = llm.config.hidden_size
        targets = lora_target_modules(llm, include_mlp=config.lora_include_mlp)
        for parameter in llm.parameters():
            parameter.requires_grad_(False)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, target_modules=targets, bias="none")
        self.llm = get_peft_model(llm, lora)
        self.lora_targets = targets

        embeddings = llm.get_input_embeddings().weight.detach()
        self.connector = nn.Sequential(
            nn.LayerNorm(capability_dim), nn.Linear(capability_dim, config.connector_hidden),
            nn.GELU(), nn.Linear(config.connector_hidden, config.n_soft_tokens * hidden))
        # Soft tokens start near the average token embedding, at the scale of real tokens.
        with torch.no_grad():
            last = self.connector[-1]
            last.weight.normal_(0.0, float(embeddings.std()) / config.connector_hidden ** 0.5)
            last.bias.copy_(embeddings.mean(0).repeat(config.n_soft_tokens))
        self.ability_head = nn.Sequential(nn.LayerNorm(capability_dim),
                                          nn.Linear(capability_dim, config.irt_dim))
        self.query_head = nn.Linear(hidden, config.irt_dim + 1)
        self.yes_no = yes_no_token_ids(tokenizer)
        self.head_ids, self.middle_ids, self.suffix_ids = prompt_pieces(tokenizer,
                                                                       config.inquiry_prompt)

    # ------------------------------------------------------------- inputs
    def instruction_ids(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"an instruction must be text, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return self.head_ids + ids[:self.config.max_instruction_tokens] + self.middle_ids

    def pack_queries(self, texts: Sequence[str], n_candidates: int) -> PackedBatch:
        packed = [pack(self.instruction_ids(t), n_candidates, self.config.n_soft_tokens,
                       self.suffix_ids) for t in texts]
        dtype = next(self.llm.parameters()).dtype
        return collate(packed, self.tokenizer.pad_token_id, dtype=dtype)

    # ------------------------------------------------------------ forward
    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by training stage: 'heads' (connector + IRT heads) and 'lora'."""
        heads = [p for m in (self.connector, self.ability_head, self.query_head)
                 for p in m.parameters()]
        lora = [p for n, p in self.llm.named_parameters() if "lora_" in n]
        return {"heads": heads, "lora": lora}

    def forward(self, batch: PackedBatch, capability: torch.Tensor) -> CapsatOutput:
        """``capability``: (M, capability_dim) features of the M candidates, in the order of
        the packed blocks."""
        batch_size, n_candidates = batch.readout_positions.shape
        if capability.shape != (n_candidates, self.capability_dim):
            raise ValueError(f"capability features have shape {tuple(capability.shape)}, "
                             f"expected {(n_candidates, self.capability_dim)}")
        soft = self.connector(capability).view(n_candidates, self.config.n_soft_tokens, -1)
        soft = soft.unsqueeze(0).expand(batch_size, -1, -1, -1)
        out = packed_forward(self.llm, batch, soft, select_token_ids=self.yes_no,
                             output_hidden_states=True)
        logits = out.logits[..., 0] - out.logits[..., 1]
        query = self.query_head(out.instruction_hidden)
        discrimination = nn.functional.softplus(query[:, :-1])
        difficulty = query[:, -1]
        ability = self.ability_head(capability)
        irt_logits = discrimination @ ability.T - difficulty[:, None]
        return CapsatOutput(logits, irt_logits, ability, discrimination, difficulty)

    # ------------------------------------------------------- state (no base)
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything that training changes: LoRA weights and the heads (not the base LLM)."""
        from peft import get_peft_model_state_dict

        state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.llm).items()}
        for name in ("connector", "ability_head", "query_head"):
            for k, v in getattr(self, name).state_dict().items():
                state[f"{name}.{k}"] = v
        # A copy: on the CPU, detach() alone would alias the live parameters.
        return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
        result = set_peft_model_state_dict(self.llm, lora)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"LoRA state has keys the model lacks: {unexpected[:5]}")
        for name in ("connector", "ability_head", "query_head"):
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            getattr(self, name).load_state_dict(part, strict=True)
