"""Counter-based randomness: Philox-4x32-10, bit-identical in Triton and torch.

Every random number Bebop's samplers use is a pure function of ``(seed, position, slot)``:

    seed      per-request seed (int64; both 32-bit halves form the Philox key)
    position  absolute token position in the sequence (the Philox counter's low words)
    slot      which use of that position: accept coin, residual/bonus draw, draft draw, ...

so a row's tokens do not depend on what else is in the batch, on the batch order, or on the backend.
Philox needs only 32-bit multiplies, xors and adds, which are exact everywhere; the torch twin
does them on int64 tensors holding uint32 values (torch has no uint32 arithmetic), splitting each
32x32-bit product into 16-bit limbs so that no intermediate exceeds 2**49.

Conversions to uniforms use only exact operations (a shift and a multiply by a power of two), so
the Triton kernels and the torch twins see bit-identical floats.
"""

from __future__ import annotations

import numpy as np
import torch

from ._triton import tl, triton

# Philox-4x32 round multipliers and Weyl key increments (Salmon et al., SC'11, "Random123").
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
_MASK32 = 0xFFFFFFFF

# Slots: each use of a token position draws from its own Philox stream.
SLOT_ACCEPT = 0  # accept/reject coin of the draft token at this position
SLOT_SAMPLE = 1  # the token sampled from the target law (residual, bonus, or plain sampling)
SLOT_DRAFT = 2  # the draft token sampled from q by the MTP head

# 2**-24 and 2**-53: scale an integer of 24 (53) random bits to a float32 (float64) in (0, 1).
_INV_2_24 = 1.0 / (1 << 24)
_INV_2_53 = 1.0 / (1 << 53)


# ----------------------------------------------------------------------------- torch twin
def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a * m`` for uint32 values held in int64 tensors."""
    m_hi, m_lo = m >> 16, m & 0xFFFF
    low_part = a * m_lo  # < 2**48
    high_part = a * m_hi  # < 2**48, weighs 2**16
    low_word = ((high_part & 0xFFFF) << 16) + low_part  # < 2**49
    hi = ((high_part >> 16) + (low_word >> 32)) & _MASK32
    return hi, low_word & _MASK32


def _philox4x32_numpy(
    seed: torch.Tensor, counter_lo: torch.Tensor, counter_hi: torch.Tensor, slot: torch.Tensor | int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPU fast path of ``philox4x32``: numpy has native uint64 arithmetic, and the engine draws a
    few dozen uniforms per decoding step, where the count of array operations, not their size,
    sets the cost. The two halves of a round are stacked, ``X = [c0, c2]`` and ``Y = [c1, c3]``, so
    a round is five operations: ``P = X * [M0, M1]``, then ``X' = hi(P)[::-1] ^ Y ^ key_r`` and
    ``Y' = lo(P)[::-1]``. Same integers, bit for bit."""
    shape = torch.broadcast_shapes(
        seed.shape, counter_lo.shape, counter_hi.shape, torch.as_tensor(slot).shape
    )

    def words(t: torch.Tensor | int) -> np.ndarray:
        return np.broadcast_to(torch.as_tensor(t, dtype=torch.int64).numpy().view(np.uint64), shape)

    mask, shift = np.uint64(_MASK32), np.uint64(32)
    seed64 = words(seed)
    key = np.stack([seed64 & mask, seed64 >> shift])  # [2, ...]
    x = np.stack([words(counter_lo) & mask, words(slot) & mask])  # counter words 0 and 2
    y = np.stack([words(counter_hi) & mask, np.zeros(shape, dtype=np.uint64)])  # words 1 and 3
    extra = (1,) * len(shape)
    multipliers = np.array([PHILOX_M0, PHILOX_M1], dtype=np.uint64).reshape(2, *extra)
    bumps = np.array([PHILOX_W0, PHILOX_W1], dtype=np.uint64).reshape(2, *extra)
    for _ in range(PHILOX_ROUNDS):
        product = x * multipliers  # < 2**64: both factors are below 2**32
        x = (product >> shift)[::-1] ^ y ^ key
        y = (product & mask)[::-1]
        key = (key + bumps) & mask
    c0, c2 = x
    c1, c3 = y
    return tuple(torch.from_numpy(w.astype(np.int64)) for w in (c0, c1, c2, c3))  # type: ignore[return-value]


def philox4x32(
    seed: torch.Tensor, counter_lo: torch.Tensor, counter_hi: torch.Tensor, slot: torch.Tensor | int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox-4x32-10 on int64 tensors (torch twin of ``_philox4x32`` below).

    Args (broadcastable int64 tensors, values are reinterpreted as unsigned):
        seed:       64-bit key; low and high halves are the two key words.
        counter_lo: counter word 0 (low 32 bits of the position).
        counter_hi: counter word 1 (high 32 bits of the position).
        slot:       counter word 2; counter word 3 is 0.
    Returns:
        four int64 tensors with values in [0, 2**32).
    """
    if seed.device.type == "cpu" and counter_lo.device.type == "cpu":
        return _philox4x32_numpy(seed, counter_lo, counter_hi, slot)
    return philox4x32_torch(seed, counter_lo, counter_hi, slot)


def philox4x32_torch(
    seed: torch.Tensor, counter_lo: torch.Tensor, counter_hi: torch.Tensor, slot: torch.Tensor | int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``philox4x32`` in torch ops (any device)."""
    key0 = seed & _MASK32
    key1 = (seed >> 32) & _MASK32
    c0 = counter_lo & _MASK32
    c1 = counter_hi & _MASK32
    c2 = torch.as_tensor(slot, dtype=torch.int64, device=c0.device) & _MASK32
    c2 = c2.expand_as(c0) if c2.dim() == 0 else c2
    c3 = torch.zeros_like(c0)
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ key0, lo1, hi0 ^ c3 ^ key1, lo0
        key0 = (key0 + PHILOX_W0) & _MASK32
        key1 = (key1 + PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def uniform_f32(seed: torch.Tensor, position: torch.Tensor, slot: int) -> torch.Tensor:
    """One float32 uniform in (0, 1) per (seed, position): ``(2k + 1) * 2**-24`` with k of 23 bits.

    Odd multiples of 2**-24 are exact in float32 and never 0 or 1, so ``u * q < p`` style tests
    need no special cases.
    """
    w0, _, _, _ = philox4x32(seed, position, position >> 32, slot)
    return _words_to_f32(w0)


def uniform_f64(seed: torch.Tensor, position: torch.Tensor, slot: int) -> torch.Tensor:
    """One float64 uniform in [0, 1) per (seed, position): 53 random bits times 2**-53."""
    w0, w1, _, _ = philox4x32(seed, position, position >> 32, slot)
    return _words_to_f64(w0, w1)


def _words_to_f32(w0: torch.Tensor) -> torch.Tensor:
    return ((w0 >> 9) * 2 + 1).to(torch.float32) * _INV_2_24


def _words_to_f64(w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    return ((w0 >> 6) * (1 << 27) + (w1 >> 5)).to(torch.float64) * _INV_2_53


def uniform_table(
    seed: torch.Tensor, start: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every uniform a sequence needs at positions start..start+width-1, in one Philox call.

    seed, start: [R] int64. Returns ``(accept, sample, draft)``: [R, width] float32 coins
    (``uniform_f32`` at SLOT_ACCEPT), and float64 uniforms at SLOT_SAMPLE and SLOT_DRAFT
    (``uniform_f64``): the same numbers, bit for bit. A CPU engine step needs a few dozen uniforms,
    and a Philox call costs far more in per-call overhead than in arithmetic, so the engine reads
    them from a table it refills every ``width`` positions.
    """
    position = start[:, None, None] + torch.arange(width, device=start.device)[None, :, None]  # [R, W, 1]
    slots = torch.tensor([SLOT_ACCEPT, SLOT_SAMPLE, SLOT_DRAFT], device=start.device)  # [3]
    w0, w1, _, _ = philox4x32(seed[:, None, None], position, position >> 32, slots)  # [R, W, 3]
    accept = _words_to_f32(w0[..., 0])
    wide = _words_to_f64(w0[..., 1:], w1[..., 1:])
    return accept, wide[..., 0], wide[..., 1]


# ----------------------------------------------------------------------------- Triton
@triton.jit
def _mulhilo32(a, M: tl.constexpr):
    """(hi, lo) 32-bit words of ``a * M`` for a uint32 tensor ``a``."""
    prod = a.to(tl.uint64) * M
    return (prod >> 32).to(tl.uint32), prod.to(tl.uint32)


@triton.jit
def _philox4x32(seed, counter_lo, counter_hi, slot):
    """Philox-4x32-10 (Triton twin of ``philox4x32``): int64 seed, counters, slot -> 4 uint32 words."""
    key0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    key1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c0 = (counter_lo & 0xFFFFFFFF).to(tl.uint32)
    c1 = (counter_hi & 0xFFFFFFFF).to(tl.uint32)
    c2 = (counter_lo * 0 + slot).to(tl.uint32)  # broadcast to the counter's shape; slot may be an int
    c3 = c0 * 0
    for _ in tl.static_range(10):  # PHILOX_ROUNDS
        hi0, lo0 = _mulhilo32(c0, 0xD2511F53)  # PHILOX_M0
        hi1, lo1 = _mulhilo32(c2, 0xCD9E8D57)  # PHILOX_M1
        n0 = hi1 ^ c1 ^ key0
        n2 = hi0 ^ c3 ^ key1
        c0, c1, c2, c3 = n0, lo1, n2, lo0
        key0 = key0 + 0x9E3779B9  # PHILOX_W0, wraps mod 2**32
        key1 = key1 + 0xBB67AE85  # PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def _uniform_f32(seed, position, slot):
    """Triton twin of ``uniform_f32``."""
    w0, _, _, _ = _philox4x32(seed, position, position >> 32, slot)
    k = (w0 >> 9).to(tl.int64)
    return (k * 2 + 1).to(tl.float32) * (1.0 / 16777216.0)  # 2**-24


@triton.jit
def _uniform_f64(seed, position, slot):
    """Triton twin of ``uniform_f64``."""
    w0, w1, _, _ = _philox4x32(seed, position, position >> 32, slot)
    k = (w0 >> 6).to(tl.int64) * 134217728 + (w1 >> 5).to(tl.int64)  # 2**27
    return k.to(tl.float64) * (1.0 / 9007199254740992.0)  # 2**-53


@triton.jit
def _philox_test_kernel(seed_ptr, ctr_ptr, slot_ptr, out_ptr, N, BLOCK: tl.constexpr):
    """Writes the four Philox words for N (seed, counter, slot) triples; for the twin tests."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    seed = tl.load(seed_ptr + offs, mask=mask, other=0)
    ctr = tl.load(ctr_ptr + offs, mask=mask, other=0)
    slot = tl.load(slot_ptr + offs, mask=mask, other=0)
    w0, w1, w2, w3 = _philox4x32(seed, ctr, ctr >> 32, slot)
    tl.store(out_ptr + offs * 4 + 0, w0.to(tl.int64), mask=mask)
    tl.store(out_ptr + offs * 4 + 1, w1.to(tl.int64), mask=mask)
    tl.store(out_ptr + offs * 4 + 2, w2.to(tl.int64), mask=mask)
    tl.store(out_ptr + offs * 4 + 3, w3.to(tl.int64), mask=mask)


def philox4x32_triton(seed: torch.Tensor, counter: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Run the Triton Philox on 1-D int64 tensors of equal length N; returns (N, 4) int64 words."""
    n = seed.numel()
    out = torch.empty((n, 4), dtype=torch.int64, device=seed.device)
    block = 64
    _philox_test_kernel[(triton.cdiv(n, block),)](seed, counter, slot, out, n, BLOCK=block)
    return out
