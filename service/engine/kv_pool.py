"""A fixed pool of KV-cache slots: bounded memory, attention in place, rollback by truncation.

Each running sequence owns one slot of ``max_len`` entries in every layer. The pool keeps the
running sequences in the *first* slots (0..active-1): when a sequence leaves, the last one moves
into its place. So a batch of B running sequences is the pool's rows ``[:B]``, a view: a step
writes its new entries in place and attends over the rows directly, with no gather, concatenation
or scatter of past entries (``PoolCache``). Rejected draft entries are rolled back by not
advancing the sequence's length; they are overwritten later and never read before that.

Shapes: L = layers, S = slots, K = KV heads, M = entries per slot, D = head dim.
"""

from __future__ import annotations

import torch

from ...model.decoder import PoolCache


class SlotPool:
    """k, v: [L, S, K, M, D] on one device. Slots 0..active-1 are in use, the rest are free."""

    def __init__(
        self,
        layers: int,
        slots: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):
        shape = (layers, slots, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.active = 0
        self._row_index = torch.arange(slots, device=device)[:, None]  # [S, 1]: PoolCache.rows
        self._cut_key: tuple | None = None  # (rows.start, rows.stop, span) of the last views()
        self._cut: tuple = ()

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def allocate(self) -> int | None:
        """The next free slot (always ``active``), or None when the pool is full."""
        if self.active >= self.capacity:
            return None
        self.active += 1
        return self.active - 1

    def release(self, slot: int) -> int | None:
        """Free ``slot``; the last slot in use moves into it. Returns the slot that moved (now at
        ``slot``), or None when ``slot`` was the last one."""
        if not 0 <= slot < self.active:
            raise ValueError(f"slot {slot} is not in use (slots in use: {self.active})")
        last = self.active - 1
        self.active = last
        if slot == last:
            return None
        self.k[:, slot] = self.k[:, last]
        self.v[:, slot] = self.v[:, last]
        return last

    def views(self, rows: slice, write_index: torch.Tensor, span: int) -> list[PoolCache]:
        """One ``PoolCache`` per layer over the pool rows ``rows`` (B of them): new entries go to
        ``write_index`` [B, T] of each row (every index below ``span``), attention reads entries
        [0, span)."""
        if span > self.max_len:
            raise RuntimeError(f"KV slot overflow: {span} entries needed, {self.max_len} per slot")
        # A step's cost on CPU is its count of ops, not their size: the cut of every layer is made
        # once and kept while the rows and span repeat (a speculative step's MTP forwards). Views
        # stay valid: the pool's tensors are never replaced, only written in place.
        key = (rows.start, rows.stop, span)
        if key != self._cut_key:
            k, v = self.k[:, rows, :, :span], self.v[:, rows, :, :span]  # [L, B, K, span, D]
            layers = [(k[layer], v[layer]) for layer in range(k.shape[0])]
            self._cut_key, self._cut = key, (layers, self._row_index[: k.shape[1]])
        layers, row_index = self._cut
        return [PoolCache(k, v, write_index, row_index) for k, v in layers]


def prefix_mask(
    base: torch.Tensor,
    T: int,
    span: int,
    dtype: torch.dtype = torch.float32,
    arange: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, 1, T, span] additive attention mask of ``dtype`` (0: may attend, -inf: may not): the new
    token t of row b (written at entry base[b] + t) sees entries 0..base[b] + t, the row's own past
    and the new tokens up to itself. Additive rather than bool because attention converts a bool
    mask in every layer, and the result is the same bit for bit.

    arange: 0, 1, ... of at least max(T, span) entries on base's device, when the caller keeps one
    (a step's cost on CPU is its count of ops)."""
    if arange is None:
        arange = torch.arange(max(T, span), device=base.device)
    limit = base[:, None] + arange[:T]  # [B, T]: the last entry each new token sees
    hidden = arange[:span] > limit[:, None, :, None]  # [B, 1, T, span]
    return torch.where(hidden, float("-inf"), 0.0).to(dtype)
