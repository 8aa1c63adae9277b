"""A Qwen3-architecture decoder, readable in one sitting.

RMSNorm, rotary position embeddings (RoPE, rotate-half layout), grouped-query attention with
per-head RMSNorm on queries and keys (Qwen3's q/k norm), and a SwiGLU MLP. Parameter names
follow Hugging Face's ``Qwen3ForCausalLM`` so checkpoints load both ways without renaming.

Shapes: B = batch, T = new tokens, P = cached (past) tokens, C = hidden size,
H = attention heads, K = key/value heads, D = head dim, V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    """The subset of a Hugging Face ``qwen3`` config.json that the architecture needs."""

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = True
    num_mtp_layers: int = 1  # MTP layers (Qwen3-Next ``mtp.*``); 0 = no draft head
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict)  # unknown config.json keys, kept for the round trip


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., D] normed over D; ``weight`` (default: this norm's [D]) may be any shape that
        broadcasts against x, e.g. [N, D] for N heads or inputs with weights of their own."""
        weight = self.weight if weight is None else weight
        # One fused op (the same float32 maths as Hugging Face's Qwen3RMSNorm): the engine runs
        # tiny batches on CPU, where the count of ops, not their size, sets the step time.
        if x.dtype == torch.float32 and weight.dtype == torch.float32 and weight.ndim == 1:
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        if x.dtype == torch.float32:  # rms_norm(x) * w is rms_norm(x, w), bit for bit
            return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * weight
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and *signed* sin tables for integer ``positions`` [B, T] -> two [B, 1, T, D] float32 tensors.

    The sin table carries the rotate-half sign (``-sin`` on the first half), so ``apply_rope`` is
    ``x * cos + roll(x, D/2) * sin``: the same products and sums as Hugging Face's
    ``x * cos + rotate_half(x) * sin`` (bit for bit), in four ops instead of nine.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[..., None] * inv_freq  # [B, T, D/2]
    sin = angles.sin()
    return torch.cat([angles, angles], -1).cos()[:, None], torch.cat([-sin, sin], -1)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, D] by the position angles (rotate-half layout, as in Qwen/Llama);
    ``sin`` is the signed table of ``rope_cos_sin``."""
    if x.dtype != torch.float32:
        return apply_rope(x.float(), cos, sin).to(x.dtype)
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


@dataclass
class LayerCache:
    """Keys and values of earlier tokens for one layer: two [B, K, P, D] tensors."""

    k: torch.Tensor
    v: torch.Tensor


@dataclass
class PoolCache:
    """One layer's keys and values kept in place in a preallocated pool (the serving engine's).

    ``k``, ``v`` [B, K, span, D] are views of the batch's rows of the pool, cut to the entries
    attention reads. The T new tokens' entries are written at ``write_index`` [B, T] of their row
    (every index below ``span``), then attention reads the whole view under the caller's mask:
    nothing is gathered, concatenated or scattered, and entries past a row's length are never read
    (rollback is not advancing the length). ``rows`` [B, 1] is 0..B-1, the row index of the
    writes, shared by every layer of a forward.
    """

    k: torch.Tensor
    v: torch.Tensor
    write_index: torch.Tensor
    rows: torch.Tensor

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k_new, v_new [B, K, T, D]; return the keys and values to attend over, [B, K, span, D]."""
        if k_new.dtype != self.k.dtype:
            k_new, v_new = k_new.to(self.k.dtype), v_new.to(self.v.dtype)
        self.k[self.rows, :, self.write_index] = k_new.transpose(1, 2)
        self.v[self.rows, :, self.write_index] = v_new.transpose(1, 2)
        return self.k, self.v


class Attention(nn.Module):
    """Grouped-query attention with q/k RMSNorm and RoPE."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        past: LayerCache | PoolCache | None = None,
    ) -> tuple[torch.Tensor, LayerCache | PoolCache]:
        """x [B, T, C]; mask [B, 1, T, P + T], bool (True = may attend) or additive (0 or -inf, in
        x's dtype), or None for causal; with a ``PoolCache`` the mask is [B, 1, T, span] over the
        pool's entries.

        Returns the output [B, T, C] and this layer's keys/values for all P + T tokens (the pool
        itself for a ``PoolCache``).
        """
        B, T, _ = x.shape
        H, K, D = self.n_head, self.n_kv, self.head_dim
        q = self.q_proj(x).view(B, T, H, D)
        k = self.k_proj(x).view(B, T, K, D)
        v = self.v_proj(x).view(B, T, K, D).transpose(1, 2)  # [B, K, T, D]
        # q and k heads normed and rotated as one tensor: half the norm and RoPE calls, the same
        # values (each head is normed on its own, and rms_norm(x) * w is rms_norm(x, w) bit for bit)
        qk = torch.cat([q, k], 2)  # [B, T, H + K, D]
        scale = torch.cat([self.q_norm.weight.expand(H, D), self.k_norm.weight.expand(K, D)])  # [H + K, D]
        qk = self.q_norm(qk, scale).transpose(1, 2)  # [B, H + K, T, D]
        cos, sin = rope
        qk = apply_rope(qk, cos, sin)
        q, k = qk[:, :H], qk[:, H:]
        if isinstance(past, PoolCache):
            k, v = past.append(k, v)  # [B, K, span, D]
            cache: LayerCache | PoolCache = past
        else:
            if past is not None:
                k, v = torch.cat([past.k, k], 2), torch.cat([past.v, v], 2)  # [B, K, P + T, D]
            cache = LayerCache(k, v)
        causal = mask is None and past is None  # keys are grouped: each serves n_head / n_kv queries
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1)), cache


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: attention and MLP, each added to the residual stream."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, mask=None, past=None):
        h, cache = self.self_attn(self.input_layernorm(x), rope, mask, past)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, cache


class Backbone(nn.Module):
    """Embeddings, decoder layers and the final norm (Hugging Face's ``model.*``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # [B, T, V] float32
    hidden: torch.Tensor  # [B, T, C] last layer's output before the final norm (the MTP input)
    cache: list[LayerCache | PoolCache]  # one per layer, covering P + T tokens (or the pool)


class Qwen3Model(nn.Module):
    """Qwen3 causal LM (``model.*`` + ``lm_head``), with an optional MTP draft head (``mtp.*``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from .mtp import MTPHead  # the MTP file imports this one's blocks

        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.mtp = MTPHead(cfg) if cfg.num_mtp_layers > 0 else None
        self.apply(self._init_weights)
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [B, 1, T, D] of positions [B, T] (from the table when one is built)."""
        if self._rope_table is None:
            return rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        cos, sin = self._rope_table
        return cos[positions][:, None], sin[positions][:, None]

    def build_rope_table(self, num_positions: int) -> None:
        """Precompute cos/sin of positions 0..num_positions-1 on the model's device: ``rope`` then
        looks them up (2 ops instead of 10 per forward) with the same values, bit for bit. The
        caller guarantees every position stays below num_positions (a serving engine's context)."""
        device = self.lm_head.weight.device
        table = self._rope_table
        if table is not None and table[0].shape[0] >= num_positions and table[0].device == device:
            return  # runners sharing the model keep the largest table
        positions = torch.arange(num_positions, device=device)[None]
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        self._rope_table = (cos[0, 0], sin[0, 0])  # [num_positions, D] each

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        past: list[LayerCache] | list[PoolCache] | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """input_ids [B, T]; positions [B, T] (default 0..T-1); mask [B, 1, T, P + T] bool or None
        (causal over the T new tokens, allowed only without ``past``). logits_at [B] int64: the one
        position per row whose logits are wanted (logits then [B, 1, V]; a prefill needs only its
        last token's, and [B, T, V] float32 of a long prompt batch is gigabytes); None: all T."""
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        if past is not None and mask is None:
            raise ValueError("a mask is required when attending over cached tokens")
        rope = self.rope(positions)
        x = self.model.embed_tokens(input_ids)  # [B, T, C]
        caches = []
        for i, layer in enumerate(self.model.layers):
            x, cache = layer(x, rope, mask, past[i] if past is not None else None)
            caches.append(cache)
        last = x if logits_at is None else x[torch.arange(B, device=x.device), logits_at][:, None]
        logits = self.lm_head(self.model.norm(last)).float()
        return DecoderOutput(logits=logits, hidden=x, cache=caches)
