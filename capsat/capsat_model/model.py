"""The CapSAT network (v3): model-capability encoder over item-level evidence, LoRA-tuned LLM
reading the candidates' soft tokens, IRT heads.

For one instruction and M candidates:

1. the capability encoder (``evidence.EvidenceEncoder``) reads each candidate's evidence items
   conditioned on the instruction's sentence embedding and gives a capability vector and a
   direct logit (which starts as the per-task prior);
2. the connector maps each capability vector to the candidate's soft tokens, and one packed
   forward pass of the LLM reads

       [prompt head, instruction (head + tail), inquiry, answer opening] [soft tokens of c]

   for every c at once (see ``packing``); the Yes-minus-No logit at c's last soft token is the
   LLM's answer;
3. P(c answers correctly) = sigmoid(direct logit + gate * LLM logit). The gate starts at 0, so
   training begins from the encoder's answer and the LLM earns its weight on the losses.

Under a chat template the answer opening is the assistant turn's header, inside the shared
prefix; without one it is "Answer:". Nothing follows the soft tokens, so 29 candidates cost
29 x k extra tokens. With ``use_llm: false`` the LLM is not loaded and P = sigmoid(direct).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .base_llm import lora_target_modules, yes_no_token_ids
from .config import CapsatConfig
from .evidence import Evidence, EncoderOutput, EvidenceEncoder
from .packing import PackedBatch, collate, pack, packed_forward

_INSTRUCTION = "\x00INSTRUCTION\x00"
_SOFT = "\x00SOFT\x00"
#: Trainable parts by name (checkpoints and saved heads are keyed by these prefixes).
PARTS = ("encoder", "connector", "gate")


@dataclass
class CapsatOutput:
    logits: torch.Tensor  # (B, M): P(correct) = sigmoid(logits)
    encoder: EncoderOutput
    llm_logits: torch.Tensor | None  # (B, M) Yes-minus-No at the readouts (None: no LLM)


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
    text += _SOFT
    head, rest = text.split(_INSTRUCTION)
    middle, tail = rest.split(_SOFT)

    def ids(piece: str) -> list[int]:
        return tokenizer.encode(piece, add_special_tokens=False) if piece else []

    # A BOS token, if the tokenizer uses one, starts the sequence.
    bos = [tokenizer.bos_token_id] if (getattr(tokenizer, "add_bos_token", False)
                                       and tokenizer.bos_token_id is not None) else []
    return bos + ids(head), ids(middle), ids(tail)


def head_and_tail(ids: list[int], limit: int, head: int) -> list[int]:
    """At most ``limit`` ids: the first ``head`` and the last ``limit - head`` (the options of
    a multiple-choice question are at its end)."""
    if len(ids) <= limit:
        return ids
    tail = limit - head
    return ids[:head] + (ids[-tail:] if tail else [])


class CapsatNetwork(nn.Module):
    """Trainable parts (encoder, connector, gate, LoRA) around a frozen base LLM."""

    def __init__(self, config: CapsatConfig, llm: nn.Module | None, tokenizer,
                 embedding_dim: int, n_tasks: int):
        super().__init__()
        self.config = config
        self.embedding_dim, self.n_tasks = embedding_dim, n_tasks
        self.encoder = EvidenceEncoder(
            embedding_dim, n_tasks, heads=config.encoder_heads,
            head_dim=config.encoder_head_dim, cosine_heads=config.encoder_cosine_heads,
            knn_ks=tuple(config.encoder_knn), hidden=config.encoder_hidden,
            capability_dim=config.capability_dim, irt_dim=config.irt_dim,
            dropout=config.encoder_dropout, start_knn=config.start_knn,
            start_knn_weight=config.start_knn_weight,
            start_prior_shrink=config.start_prior_shrink, difficulty_k=config.difficulty_k,
            difficulty_weight=config.difficulty_weight, difficulty_ridge=config.difficulty_ridge,
            onboarded_start=config.onboarded_start,
            onboarded_difficulty_weight=config.onboarded_difficulty_weight,
            shared_difficulty=config.shared_difficulty)
        self.llm = None
        self.lora_targets: list[str] = []
        if not config.use_llm:
            return
        if llm is None:
            raise ValueError("use_llm needs a base LLM")
        from peft import LoraConfig, get_peft_model

        self.tokenizer = tokenizer
        hidden = llm.config.hidden_size
        targets = lora_target_modules(llm, include_mlp=config.lora_include_mlp)
        for parameter in llm.parameters():
            parameter.requires_grad_(False)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, target_modules=targets, bias="none")
        self.llm = get_peft_model(llm, lora)
        self.lora_targets = targets
        embeddings = llm.get_input_embeddings().weight.detach().float()
        self.connector = nn.Sequential(
            nn.LayerNorm(config.capability_dim),
            nn.Linear(config.capability_dim, config.connector_hidden), nn.GELU(),
            nn.Linear(config.connector_hidden, config.n_soft_tokens * hidden))
        # Soft tokens start near the average token embedding, at the scale of real tokens.
        with torch.no_grad():
            last = self.connector[-1]
            last.weight.normal_(0.0, float(embeddings.std()) / config.connector_hidden ** 0.5)
            last.bias.copy_(embeddings.mean(0).repeat(config.n_soft_tokens))
        self.gate = nn.Parameter(torch.zeros(()))
        self.yes_no = yes_no_token_ids(tokenizer)
        self.head_ids, self.middle_ids, self.suffix_ids = prompt_pieces(tokenizer,
                                                                       config.inquiry_prompt)

    # ------------------------------------------------------------- inputs
    def instruction_ids(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"an instruction must be text, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        ids = head_and_tail(ids, self.config.max_instruction_tokens,
                            self.config.instruction_head_tokens)
        return self.head_ids + ids + self.middle_ids

    def pack_queries(self, texts: Sequence[str], n_candidates: int) -> PackedBatch | None:
        if self.llm is None:
            return None
        packed = [pack(self.instruction_ids(t), n_candidates, self.config.n_soft_tokens,
                       self.suffix_ids) for t in texts]
        dtype = next(self.llm.parameters()).dtype
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            dtype = torch.bfloat16  # 4-bit weights compute in bf16
        return collate(packed, self.tokenizer.pad_token_id, dtype=dtype)

    # ------------------------------------------------------------ forward
    def parts(self) -> dict[str, nn.Module | nn.Parameter]:
        out = {"encoder": self.encoder}
        if self.llm is not None:
            out.update(connector=self.connector, gate=self.gate)
        return out

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by training stage: 'encoder', 'llm_heads' (connector and gate) and
        'lora'."""
        groups = {"encoder": list(self.encoder.parameters()), "llm_heads": [], "lora": []}
        if self.llm is not None:
            groups["llm_heads"] = list(self.connector.parameters()) + [self.gate]
            groups["lora"] = [p for n, p in self.llm.named_parameters() if "lora_" in n]
        return groups

    def forward(self, query_embeddings: torch.Tensor, evidence: Evidence,
                batch: PackedBatch | None = None,
                known_tasks: torch.Tensor | None = None) -> CapsatOutput:
        """``query_embeddings`` (B, E); ``evidence`` of the M candidates; ``batch``: the packed
        instructions for the LLM (``pack_queries``; None skips the LLM, for the encoder's
        stage of training); ``known_tasks`` (B,): each instruction's task index where it is
        labelled, -1 where not (None: none is)."""
        encoded = self.encoder(query_embeddings, evidence, known_tasks)
        if self.llm is None or batch is None:
            return CapsatOutput(encoded.direct_logit, encoded, None)
        b, m = encoded.direct_logit.shape
        if tuple(batch.readout_positions.shape) != (b, m):
            raise ValueError(f"the packed batch holds {tuple(batch.readout_positions.shape)} "
                             f"(queries, candidates), the evidence ({b}, {m})")
        soft = self.connector(encoded.capability).view(b, m, self.config.n_soft_tokens, -1)
        out = packed_forward(self.llm, batch, soft, select_token_ids=self.yes_no)
        llm_logits = (out.logits[..., 0] - out.logits[..., 1]).float()
        return CapsatOutput(encoded.direct_logit + self.gate * llm_logits, encoded, llm_logits)

    # ------------------------------------------------------- state (no base)
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything that training changes: LoRA weights and the other parts (not the base)."""
        state = {}
        if self.llm is not None:
            from peft import get_peft_model_state_dict

            state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.llm).items()}
        for name, part in self.parts().items():
            if isinstance(part, nn.Parameter):
                state[name] = part
            else:
                state.update({f"{name}.{k}": v for k, v in part.state_dict().items()})
        # A copy: on the CPU, detach() alone would alias the live parameters.
        return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = {name for name in self.parts()}
        found = {k.split(".", 1)[0] for k in state if not k.startswith("lora.")}
        if found != expected:
            raise ValueError(f"saved parts {sorted(found)} do not match the network's "
                             f"{sorted(expected)} (use_llm differs?)")
        if self.llm is not None:
            from peft import set_peft_model_state_dict

            lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
            result = set_peft_model_state_dict(self.llm, lora)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise ValueError(f"LoRA state has keys the model lacks: {unexpected[:5]}")
        for name, part in self.parts().items():
            if isinstance(part, nn.Parameter):
                with torch.no_grad():
                    part.copy_(state[name])
            else:
                sub = {k[len(name) + 1:]: v for k, v in state.items()
                       if k.startswith(name + ".")}
                part.load_state_dict(sub, strict=True)
