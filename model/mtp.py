"""The MTP (multi-token prediction) draft head, in Qwen3-Next's ``mtp.*`` layout.

One step turns the hidden state h of position t and the embedding of the token at t + 1 into a
draft distribution for the token at t + 2:

    x = fc([pre_fc_norm_embedding(embed(token)), pre_fc_norm_hidden(h)])   # [B, T, 2C] -> [B, T, C]
    x = decoder_layer(x)                                                    # its own attention/KV
    logits = lm_head(norm(x))                                               # shared lm_head

and the step's output x (before ``norm``) is the h of the next step, so the same layer drafts
several tokens recursively, as SGLang does for NEXTN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .decoder import DecoderLayer, LayerCache, ModelConfig, PoolCache, RMSNorm


@dataclass
class MTPOutput:
    logits: torch.Tensor  # [B, T, V] float32
    hidden: torch.Tensor  # [B, T, C] input h of the next draft step
    cache: list[LayerCache | PoolCache]  # one per MTP layer


class MTPHead(nn.Module):
    """Qwen3-Next style MTP layer(s); ``embed`` and ``lm_head`` are the backbone's, passed in."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_fc_norm_embedding = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.pre_fc_norm_hidden = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.fc = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_mtp_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        token_embeds: torch.Tensor,
        hidden: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        lm_head: nn.Module,
        mask: torch.Tensor | None = None,
        past: list[LayerCache] | list[PoolCache] | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> MTPOutput:
        """token_embeds [B, T, C] (embedding of the token after h's position); hidden [B, T, C].

        logits_at: [B] int64, the one step per row whose logits and hidden are wanted (the output
        then has T = 1); None for all T. A serving engine commits several MTP entries per row but
        drafts from the last one only, so the norm and lm_head run on one position per row.
        """
        # both inputs normed in one call, each with its own weight: [B, T, 2, C] -> [B, T, 2C]
        pair = torch.stack([token_embeds, hidden], -2)
        scale = torch.stack([self.pre_fc_norm_embedding.weight, self.pre_fc_norm_hidden.weight])  # [2, C]
        x = self.fc(self.pre_fc_norm_embedding(pair, scale).flatten(-2))
        caches = []
        for i, layer in enumerate(self.layers):
            x, cache = layer(x, rope, mask, past[i] if past is not None else None)
            caches.append(cache)
        if logits_at is not None:
            x = x[torch.arange(x.shape[0], device=x.device), logits_at][:, None]  # [B, 1, C]
        return MTPOutput(logits=lm_head(self.norm(x)).float(), hidden=x, cache=caches)


def chain_attention_mask(L: int, depth: int, device: torch.device) -> torch.Tensor:
    """Attention mask [1, 1, L, depth * L] for draft depth ``depth`` of L teacher-forced chains.

    Chain i starts from the backbone state at position i. Its depth-1 entry sits at position i + 1
    and is what the engine keeps in the MTP cache for committed tokens; deeper entries exist only
    while drafting. So at depth k, chain i sees the depth-1 entries of chains j <= i (causal) and its
    own entries at depths 2..k (diagonal blocks), exactly what the engine's draft step sees.
    """
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    own = torch.eye(L, dtype=torch.bool, device=device)
    return torch.cat([causal] + [own] * (depth - 1), 1)[None, None]


class DraftParts(Protocol):
    """What drafting needs from a model: ours (``Qwen3Model``) or a wrapped Hugging Face backbone."""

    mtp: MTPHead
    lm_head: nn.Module

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...  # [B, T] -> [B, T, C]

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def mtp_chain_logits(
    model: DraftParts,
    input_ids: torch.Tensor,
    hidden: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Draft logits of every teacher-forced chain, ``steps`` deep, in one pass per depth.

    Args:
        model: the MTP head with the backbone's embeddings, lm_head and RoPE.
        input_ids: [B, L] tokens.
        hidden: [B, L] x C backbone states (last layer, before the final norm).
        steps: draft depth S.
    Returns:
        [B, L, S, V] float32: entry (b, i, k-1) is the depth-k draft for the token at i + k + 1,
        to be compared with the backbone's law at position i + k. Entries with i + k >= L are
        meaningless (they read padding) and must be masked by the caller.
    """
    B, L = input_ids.shape
    device = input_ids.device
    head = model.mtp
    index = torch.arange(L, device=device)
    pad = torch.zeros(B, steps, dtype=input_ids.dtype, device=device)
    padded_ids = torch.cat([input_ids, pad], 1)  # [B, L + S]
    past: list[LayerCache] | None = None
    logits = []
    for k in range(1, steps + 1):
        token_embeds = model.embed(padded_ids[:, k : k + L])  # token at i + k, [B, L, C]
        rope = model.rope((index + k).expand(B, L))
        out = head(token_embeds, hidden, rope, model.lm_head, chain_attention_mask(L, k, device), past)
        logits.append(out.logits)
        hidden, past = out.hidden, out.cache
    return torch.stack(logits, 2)
