"""A fixed pool of KV-cache slots: bounded memory, per-sequence lengths, rollback by truncation.

Each running sequence owns one slot of ``max_len`` positions in every layer. A step gathers the
slots of the batch into padded tensors, the model appends the new tokens' keys/values, and the
new entries are scattered back; rejected draft tokens are dropped by not advancing the length.

Shapes: L = layers, S = slots, K = KV heads, M = max_len, D = head dim.
"""

from __future__ import annotations

import torch

from bebop.service.model.decoder import LayerCache


class SlotPool:
    """k, v: [L, S, K, M, D]; lengths: [S] int64 (valid positions per slot)."""

    def __init__(
        self, layers: int, slots: int, kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype
    ):
        shape = (layers, slots, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.lengths = torch.zeros(slots, dtype=torch.int64)
        self.max_len = max_len
        self.free = list(range(slots - 1, -1, -1))

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def allocate(self) -> int | None:
        """A free slot (length 0), or None when the pool is full."""
        if not self.free:
            return None
        slot = self.free.pop()
        self.lengths[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.free.append(slot)

    def gather(self, slots: torch.Tensor) -> tuple[list[LayerCache], int]:
        """Padded caches of ``slots`` [B]: one LayerCache([B, K, P, D] x2) per layer, P = max length."""
        P = int(self.lengths[slots].max()) if len(slots) else 0
        return [
            LayerCache(self.k[layer, slots, :, :P], self.v[layer, slots, :, :P])
            for layer in range(self.k.shape[0])
        ], P

    def scatter(
        self, slots: torch.Tensor, caches: list[LayerCache], P: int, T: int, keep: torch.Tensor
    ) -> None:
        """Write the T new entries of each row (after the P padded ones) at the row's own length,
        then advance each slot's length by ``keep`` [B] (<= T): entries past it are rolled back."""
        B = len(slots)
        pos = self.lengths[slots][:, None] + torch.arange(T)[None]  # [B, T]
        if bool((pos >= self.max_len).any()):
            raise RuntimeError("KV slot overflow: admission control let a sequence outgrow its slot")
        rows = slots[:, None].expand(B, T)
        for layer, cache in enumerate(caches):
            self.k[layer][rows, :, pos] = cache.k[:, :, P : P + T].permute(0, 2, 1, 3).to(self.k.dtype)
            self.v[layer][rows, :, pos] = cache.v[:, :, P : P + T].permute(0, 2, 1, 3).to(self.v.dtype)
        self.lengths[slots] += keep


def batch_mask(lengths: torch.Tensor, P: int, T: int) -> torch.Tensor:
    """[B, 1, T, P + T] bool: new token t sees the row's own past (< length) and new tokens <= t."""
    past = torch.arange(P)[None, None, :] < lengths[:, None, None]  # [B, 1, P]
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None]  # [1, T, T]
    B = len(lengths)
    return torch.cat([past.expand(B, T, P), causal.expand(B, T, T)], -1)[:, None]
