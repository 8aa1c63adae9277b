"""Chain verification of MTP drafts by true rejection sampling: Triton kernels and their torch twin.

Given target distributions p_1..p_{G+1} and G drafts y_i sampled from draft distributions q_i:

    1. for i = 1..G: accept y_i when u_i * q_i(y_i) < p_i(y_i)   (probability min(1, p/q));
       stop at the first rejection j;
    2. on a rejection at j, emit one token from the residual max(0, p_j - q_j) (normalised);
       when all G are accepted, emit a bonus token from p_{G+1}.

The emitted tokens are distributed exactly as sampling the target alone. ``draft_probs=None`` is
the target-only mode (SGLang's default verify): each draft is argmax q, treated as a one-hot q,
so it is accepted with probability p(y) and the residual is p with y removed.

Shapes (B = batch, G = max drafts per row, V = vocabulary):

    target_probs   [B, G + 1, V]  float32/bf16/fp16  target law per position
    draft_probs    [B, G, V]      same dtype, or None (target-only)
    draft_tokens   [B, G]         int64
    seeds          [B]            int64   per-request seed
    positions      [B]            int64   absolute position of the first draft token
    num_drafts     [B]            int64   drafts in use per row (<= G), or None (all G)
    coins          [B, G]         float32 host-supplied accept coins in [0, 1), or None (counter RNG)
    final_coins    [B]            float32 host-supplied uniform of the residual/bonus draw, or None;
                   or [B, G + 1]  float64 one per possible stop position (torch backend only: the
                                  engine's CPU path passes the counter RNG's own uniforms this way)
    -> tokens      [B, G + 1]     int64   accepted drafts, the residual/bonus token, then -1
       num_accepted[B]            int64
       entropy     [B, G + 1]     float32 target entropy per position in nats (NaN if not computed)

Exactness across backends, by construction. The coins are Philox uniforms keyed by
(seed, position + i, SLOT_ACCEPT), compared as ``u * q < p`` in float32: one correctly rounded
multiply on every backend. The residual draw never sums floats: each weight is quantised to a
fixed-point integer ``floor(r * 2**40)`` (exact: a power-of-two scale and a truncation), so block
sums, prefix sums and the inverse-CDF search are integer operations whose result does not depend
on summation order or on the backend (the torch twin holds those integers in float64, where every
partial sum of a law, below 2**53, is exact; the Triton kernels in int64). The threshold
``floor(U * total)`` uses one float64 multiply of a 53-bit uniform. A caller that owns its
randomness (SGLang's verify, which derives its coins from ``sampling_seed``) passes ``coins`` and
``final_coins`` instead: they replace the Philox draws one for one (``seeds`` and ``positions``
are then unused), and the rest is unchanged. The quantisation drops at most 2**-40 of probability
per token (at most V * 2**-40 ~ 1.4e-7 in all for V = 151936), below float32 rounding of the inputs.

GPU layout. Phase A runs a (B, ceil(V / BLOCK_V)) grid: each program decides the row's accepted
count (G scalar gathers, repeated per program because it is cheaper than a launch), then reads its
vocabulary tile of every target row once for the entropy and, at the stop position j, the residual
weights; it writes per-tile partial sums. Phase B runs one program per row: a prefix over the tile
sums picks the tile that holds the threshold, and only that tile is read again. So the vocabulary
is read once, and a batch of 1 still spreads over many programs. SGLang 0.5.23's
``chain_speculative_sampling_triton`` runs one program per request with two passes (sum, then CDF).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._triton import resolve_backend, tl, triton
from .rng import SLOT_ACCEPT, SLOT_SAMPLE, _uniform_f32, _uniform_f64, uniform_f32, uniform_f64

# Fixed-point scale of the residual weights: 2**40 keeps V * 2**40 far inside int64 and drops
# at most 2**-40 of probability per token.
WEIGHT_SCALE = float(1 << 40)
# Rows must sum to 1 within this tolerance (bf16 rounding over a large vocabulary stays well inside).
PROB_SUM_TOLERANCE = 0.02
# Entries may exceed 1 by this much after rounding; more than that is not a probability.
PROB_MAX = 1.0 + 1e-3
PAD_TOKEN_ID = -1  # tokens after the emitted one


@dataclass
class ChainSample:
    """Result of one chain verification step (shapes in the module docstring)."""

    tokens: torch.Tensor  # [B, G + 1] int64
    num_accepted: torch.Tensor  # [B] int64
    entropy: torch.Tensor  # [B, G + 1] float32, nats


def chain_rejection_sample(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_tokens: torch.Tensor,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    *,
    num_drafts: torch.Tensor | None = None,
    backend: str = "auto",
    with_entropy: bool = True,
    validate: bool = True,
    block_v: int | None = None,
    coins: torch.Tensor | None = None,
    final_coins: torch.Tensor | None = None,
) -> ChainSample:
    """Verify a chain of G drafts per row and emit 1..G+1 tokens distributed exactly as the target.

    Args: see the shape table in the module docstring.
        backend: "auto" (Triton on CUDA tensors, the torch twin elsewhere), "triton" or "torch";
            both give the same tokens for the same inputs.
        with_entropy: compute the target entropy of every position (one extra read of the target
            rows); when False, ``entropy`` is NaN.
        validate: check shapes, dtypes, token range and that the rows in use are probability
            vectors (one reduction over the inputs and a host sync). Shapes are always checked.
        block_v: vocabulary tile of the Triton kernels (default chosen from B and V).
        coins, final_coins: host-supplied uniforms in place of the counter RNG (both or neither).
    """
    G = _check_shapes(target_probs, draft_probs, draft_tokens, seeds, positions, num_drafts)
    B, _, V = target_probs.shape
    _check_coins(coins, final_coins, B, G, target_probs.device)
    tensors = [
        t for t in (target_probs, draft_probs, draft_tokens, seeds, positions, num_drafts) if t is not None
    ]
    use_triton = resolve_backend(backend, *tensors) == "triton"
    every_draft = num_drafts is None
    if num_drafts is None and (validate or use_triton):
        num_drafts = torch.full((B,), G, dtype=torch.int64, device=target_probs.device)
    if validate:
        _check_values(target_probs, draft_probs, draft_tokens, num_drafts, G, V)
    if use_triton:
        if final_coins is not None and final_coins.ndim == 2:
            raise ValueError("final_coins per stop position [B, G+1] is for the torch backend only")
        return _chain_rejection_sample_triton(
            target_probs,
            draft_probs,
            draft_tokens,
            seeds,
            positions,
            num_drafts,
            with_entropy,
            SLOT_SAMPLE,
            block_v,
            coins,
            final_coins,
        )
    return chain_rejection_sample_torch(
        target_probs,
        draft_probs,
        draft_tokens,
        seeds,
        positions,
        None if every_draft else num_drafts,  # the twin skips the masking of unused drafts
        with_entropy,
        SLOT_SAMPLE,
        coins,
        final_coins,
    )


def sample_from_probs(
    probs: torch.Tensor,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    *,
    slot: int = SLOT_SAMPLE,
    backend: str = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """Draw one token per row of ``probs`` [B, V] with the counter RNG: (seed, position, slot).

    The same integer inverse-CDF draw as the residual/bonus token (G = 0 chain), so plain decoding
    (slot SLOT_SAMPLE) and draft sampling from q (slot SLOT_DRAFT) are exact and batch-invariant.
    Returns [B] int64.
    """
    if probs.ndim != 2:
        raise ValueError(f"probs must be [B, V], got shape {tuple(probs.shape)}")
    B = probs.shape[0]
    target = probs.unsqueeze(1)
    empty_tokens = torch.empty((B, 0), dtype=torch.int64, device=probs.device)
    _check_shapes(target, None, empty_tokens, seeds, positions, None)
    no_drafts = torch.zeros((B,), dtype=torch.int64, device=probs.device)
    if validate:
        _check_values(target, None, empty_tokens, no_drafts, 0, probs.shape[1], name="probs")
    if resolve_backend(backend, probs, seeds, positions) == "triton":
        out = _chain_rejection_sample_triton(
            target, None, empty_tokens, seeds, positions, no_drafts, False, slot, None
        )
        return out.tokens[:, 0]
    # The G = 0 chain reduces to this draw (the residual is p itself); calling it directly skips
    # the chain's bookkeeping, which dominates at the engine's small batch sizes.
    return _draw_index(_quantise(probs.float()), None, seeds, positions, slot)


def draw_from_probs(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The draw of ``sample_from_probs`` given its uniforms: probs [B, V] float32, uniforms [B]
    float64 from ``uniform_f64(seeds, positions, slot)``. Returns [B] int64, the same tokens.

    For callers that batch their counter-RNG calls (the engine makes all of a step's uniforms in
    one call); torch ops only, so it runs on any device. No input checks.
    """
    return _draw_index(_quantise(probs.float()), None, None, None, SLOT_SAMPLE, u=uniforms)


# ----------------------------------------------------------------------------- validation
def _check_shapes(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_tokens: torch.Tensor,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    num_drafts: torch.Tensor | None,
) -> int:
    """Checks ranks, shapes, dtypes and devices; returns G. Raises ValueError naming the argument."""
    if not isinstance(target_probs, torch.Tensor) or target_probs.ndim != 3:
        raise ValueError(f"target_probs must be a [B, G+1, V] tensor, got {_describe(target_probs)}")
    if not target_probs.is_floating_point():
        raise ValueError(f"target_probs must be floating point, got {target_probs.dtype}")
    B, G1, V = target_probs.shape
    if G1 < 1 or V < 1:
        raise ValueError(
            f"target_probs must have G+1 >= 1 positions and V >= 1, got shape {tuple(target_probs.shape)}"
        )
    G = G1 - 1
    if not isinstance(draft_tokens, torch.Tensor) or tuple(draft_tokens.shape) != (B, G):
        raise ValueError(f"draft_tokens must have shape [B, G] = [{B}, {G}], got {_describe(draft_tokens)}")
    if draft_tokens.dtype != torch.int64:
        raise ValueError(f"draft_tokens must be int64, got {draft_tokens.dtype}")
    if draft_probs is not None:
        if not isinstance(draft_probs, torch.Tensor) or tuple(draft_probs.shape) != (B, G, V):
            raise ValueError(
                f"draft_probs must have shape [B, G, V] = [{B}, {G}, {V}], got {_describe(draft_probs)}"
            )
        if draft_probs.dtype != target_probs.dtype:
            raise ValueError(
                f"draft_probs dtype {draft_probs.dtype} differs from target_probs dtype {target_probs.dtype}"
            )
    for name, t in (("seeds", seeds), ("positions", positions), ("num_drafts", num_drafts)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (B,):
            raise ValueError(f"{name} must have shape [B] = [{B}], got {_describe(t)}")
        if t.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {t.dtype}")
    devices = {
        t.device
        for t in (target_probs, draft_probs, draft_tokens, seeds, positions, num_drafts)
        if t is not None
    }
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    return G


def _check_coins(
    coins: torch.Tensor | None, final_coins: torch.Tensor | None, B: int, G: int, device: torch.device
) -> None:
    """Host-supplied uniforms: both or neither, float32, coins [B, >= G] (extra columns unused), final [B]."""
    if (coins is None) != (final_coins is None):
        raise ValueError("coins and final_coins must be given together")
    if coins is None:
        return
    if coins.ndim != 2 or coins.shape[0] != B or coins.shape[1] < G or coins.dtype != torch.float32:
        raise ValueError(
            f"coins must be float32 [B, >= G] = [{B}, >= {G}], got {_describe(coins)} {coins.dtype}"
        )
    per_stop = tuple(final_coins.shape) == (B, G + 1) and final_coins.dtype == torch.float64
    if not per_stop and (tuple(final_coins.shape) != (B,) or final_coins.dtype != torch.float32):
        raise ValueError(
            f"final_coins must be float32 [B] = [{B}] or float64 [B, G+1] = [{B}, {G + 1}], "
            f"got {_describe(final_coins)} {final_coins.dtype}"
        )
    if coins.device != device or final_coins.device != device:
        raise ValueError("coins and final_coins must be on the device of target_probs")


def _check_values(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_tokens: torch.Tensor,
    num_drafts: torch.Tensor,
    G: int,
    V: int,
    name: str = "target_probs",
) -> None:
    """Value checks on the rows in use (one pass over the inputs and one host sync)."""
    if bool(((num_drafts < 0) | (num_drafts > G)).any()):
        raise ValueError(f"num_drafts must lie in [0, G] = [0, {G}]")
    steps = torch.arange(G + 1, device=num_drafts.device)
    used_drafts = steps[:G] < num_drafts[:, None]  # [B, G]
    used_targets = steps <= num_drafts[:, None]  # [B, G+1]
    if G > 0 and bool(((draft_tokens < 0) | (draft_tokens >= V))[used_drafts].any()):
        raise ValueError(f"draft_tokens must lie in [0, V) = [0, {V})")
    _check_prob_rows(name, target_probs, used_targets)
    if draft_probs is not None and G > 0:
        _check_prob_rows("draft_probs", draft_probs, used_drafts)
        # A draft sampled from q has q(y) > 0; q(y) = 0 means the tokens and laws do not match.
        q_draft = draft_probs.gather(2, draft_tokens.clamp(0, V - 1)[:, :, None]).squeeze(2)
        if bool(((q_draft <= 0) & used_drafts).any()):
            raise ValueError("draft_tokens must be drawn from draft_probs: a draft has q(y) = 0")


def _check_prob_rows(name: str, probs: torch.Tensor, used: torch.Tensor) -> None:
    """Rows in use must be finite, in [0, PROB_MAX], and sum to 1 within PROB_SUM_TOLERANCE."""
    p = probs.float()
    bad_entry = ~((p >= 0) & (p <= PROB_MAX))  # NaN fails both comparisons
    if bool((bad_entry.any(-1) & used).any()):
        raise ValueError(f"{name} holds NaN, negative or >1 entries: it must hold probabilities")
    row_sum = p.sum(-1)
    if bool(((row_sum - 1).abs() > PROB_SUM_TOLERANCE)[used].any()):
        worst = float(((row_sum - 1).abs() * used).max())
        raise ValueError(
            f"{name} rows must sum to 1 (within {PROB_SUM_TOLERANCE}); one is off by {worst:.3g}"
        )


def _describe(t: object) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


# ----------------------------------------------------------------------------- torch twin
def chain_rejection_sample_torch(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_tokens: torch.Tensor,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    num_drafts: torch.Tensor | None,
    with_entropy: bool,
    sample_slot: int,
    coins: torch.Tensor | None = None,
    final_coins: torch.Tensor | None = None,
) -> ChainSample:
    """Torch twin of the Triton kernels: the readable spec, and the CPU path. Same tokens, bit for bit.
    ``num_drafts`` None: every row uses all G drafts (the engine's steps)."""
    B, G1, _ = target_probs.shape
    G = G1 - 1
    device = target_probs.device
    rows = torch.arange(B, device=device)
    steps = torch.arange(G1, device=device)
    p = _float(target_probs)
    q = None if draft_probs is None else _float(draft_probs)

    # Accept/reject: u * q(y) < p(y), stopping at the first rejection. A draft with q(y) = 0 cannot
    # have been drawn from q: it is rejected (as SGLang's kernel does) rather than accepted on p(y) > 0.
    in_use = None if num_drafts is None else steps[:G] < num_drafts[:, None]  # [B, G]
    safe_tokens = draft_tokens if in_use is None else torch.where(in_use, draft_tokens, 0)  # no padding ids
    if G > 0:
        at_drafts = safe_tokens[:, :, None]
        p_draft = p[:, :G].gather(2, at_drafts)[:, :, 0]  # [B, G]
        if coins is None:
            coins = uniform_f32(seeds[:, None], positions[:, None] + steps[:G], SLOT_ACCEPT)  # [B, G]
        if q is None:
            accepted = coins[:, :G] < p_draft
        else:
            q_draft = q.gather(2, at_drafts)[:, :, 0]
            accepted = (coins[:, :G] * q_draft < p_draft) & (q_draft > 0)
        if in_use is not None:
            accepted &= in_use
        num_accepted = accepted.long().cumprod(1).sum(1)
    else:
        num_accepted = torch.zeros(B, dtype=torch.int64, device=device)

    # The law of the emitted token: the residual at a rejection, p itself after all drafts.
    stop = num_accepted  # [B]
    p_stop = p[rows, stop]  # [B, V]
    if G > 0:
        rejected = stop < (G if num_drafts is None else num_drafts)
        stop_in_drafts = stop.clamp(max=G - 1)
        if q is None:
            q_stop = torch.zeros_like(p_stop)
            q_stop[rows, safe_tokens[rows, stop_in_drafts]] = 1.0
        else:
            q_stop = q[rows, stop_in_drafts]
        residual = torch.where(rejected[:, None], (p_stop - q_stop).clamp_min(0.0), p_stop)
    else:
        residual = p_stop
    if final_coins is not None and final_coins.ndim == 2:  # one uniform per possible stop position
        final_coins = final_coins[rows, stop]
    fallback = None if residual is p_stop else p_stop
    token = _draw_index(_quantise(residual), fallback, seeds, positions + stop, sample_slot, final_coins)

    pad = torch.full((B, 1), PAD_TOKEN_ID, dtype=torch.int64, device=device)
    tokens = torch.where(steps < num_accepted[:, None], torch.cat([draft_tokens, pad], 1), PAD_TOKEN_ID)
    tokens[rows, stop] = token
    if with_entropy:
        entropy = entropy_nats(p)
    else:
        entropy = torch.full((B, G1), float("nan"), device=device)
    return ChainSample(tokens=tokens, num_accepted=num_accepted, entropy=entropy)


def _float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def entropy_nats(probs: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the last dimension, in nats (0 log 0 = 0): [..., V] -> [...]."""
    # p * log p, and 0 where that is 0 * -inf: half the time of torch.special.xlogy on CPU
    return -(probs * probs.log()).nan_to_num_(0.0).sum(-1)


def _quantise(weights: torch.Tensor) -> torch.Tensor:
    """Float32 weights in [0, ~1] -> the fixed-point integers ``floor(w * 2**40)``, as float32.

    Exact: the scale is a power of two and the floor drops only a fraction. They stay floats
    because a float -> int64 conversion has no vector instruction on most CPUs.
    """
    return (weights * WEIGHT_SCALE).floor_()


def _draw_index(
    weights: torch.Tensor,
    fallback: torch.Tensor | None,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    slot: int,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """Inverse-CDF draw from quantised weights [B, V] (``_quantise``) -> [B] int64.

    ``fallback`` [B, V] float32: the law whose quantised weights replace a row's that are all 0
    (a residual p - q that is 0 only by rounding, p == q up to float32, where any draw from p is as
    good as the residual's); None for a plain draw. The token is the count of prefix sums at or
    below ``floor(u * total)``: the index the Triton kernel's tile search finds. The prefix sums
    are float64 and exact: integers whose sums stay below 2**53 (a law's weights add up to about
    2**40).
    """
    cdf = weights.cumsum(1, dtype=torch.float64)  # [B, V]
    if fallback is not None:
        empty = cdf[:, -1:] == 0  # [B, 1]
        if bool(empty.any()):  # rare: look before computing a second CDF
            cdf = torch.where(empty, _quantise(fallback).cumsum(1, dtype=torch.float64), cdf)
    total = cdf[:, -1]
    u = uniform_f64(seeds, positions, slot) if u is None else u.double()
    # u < 1, but u * total can round up to total in float64: the minimum keeps the draw in range
    threshold = torch.minimum((u * total).floor_(), total - 1)
    return torch.searchsorted(cdf, threshold[:, None], right=True)[:, 0]


# ----------------------------------------------------------------------------- Triton launcher
def _default_block_v(B: int, V: int) -> int:
    # Small batches split the vocabulary finely so they still fill the GPU's SMs; large batches
    # already have B programs per tile column, and larger tiles mean fewer phase-A programs.
    block = 1024 if B <= 16 else 4096
    return min(block, triton.next_power_of_2(V))


def _chain_rejection_sample_triton(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_tokens: torch.Tensor,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    num_drafts: torch.Tensor,
    with_entropy: bool,
    sample_slot: int,
    block_v: int | None,
    coins: torch.Tensor | None = None,
    final_coins: torch.Tensor | None = None,
) -> ChainSample:
    B, G1, V = target_probs.shape
    G = G1 - 1
    device = target_probs.device
    block_v = block_v or _default_block_v(B, V)
    num_tiles = triton.cdiv(V, block_v)
    # Launch arguments must be real tensors; the q pointer is never read in target-only mode.
    q = draft_probs if draft_probs is not None else target_probs
    q_strides = q.stride() if draft_probs is not None else (0, 0, 0)
    # Host uniforms, or stand-ins that are never read (HOST_UNIFORMS=False).
    host_uniforms = coins is not None
    coin_ptr, coin_strides = (coins, coins.stride()) if host_uniforms else (seeds, (0, 0))
    final_ptr = final_coins if host_uniforms else seeds

    tokens = torch.empty((B, G1), dtype=torch.int64, device=device)
    num_accepted = torch.empty((B,), dtype=torch.int64, device=device)
    entropy = torch.empty((B, G1), dtype=torch.float32, device=device)
    entropy_partial = torch.empty((B, G1, num_tiles), dtype=torch.float32, device=device)
    tile_weight = torch.empty((B, num_tiles, 2), dtype=torch.int64, device=device)

    _chain_tiles_kernel[(B, num_tiles)](
        target_probs, *target_probs.stride(),
        q, *q_strides,
        draft_tokens, *draft_tokens.stride(),
        seeds, positions, num_drafts,
        coin_ptr, *coin_strides,
        num_accepted, entropy_partial, tile_weight,
        V,
        G=G, BLOCK_V=block_v, TARGET_ONLY=draft_probs is None, WITH_ENTROPY=with_entropy,
        HOST_UNIFORMS=host_uniforms,
    )  # fmt: skip
    _chain_draw_kernel[(B,)](
        target_probs, *target_probs.stride(),
        q, *q_strides,
        draft_tokens, *draft_tokens.stride(),
        seeds, positions, num_drafts,
        final_ptr,
        num_accepted, entropy_partial, tile_weight,
        tokens, entropy,
        V, num_tiles, sample_slot,
        G=G, BLOCK_V=block_v, TILES_POW2=triton.next_power_of_2(num_tiles),
        TARGET_ONLY=draft_probs is None, WITH_ENTROPY=with_entropy, HOST_UNIFORMS=host_uniforms,
    )  # fmt: skip
    return ChainSample(tokens=tokens, num_accepted=num_accepted, entropy=entropy)


# ----------------------------------------------------------------------------- Triton kernels
@triton.jit
def _accepted_count(
    p_ptr, sp_b, sp_g, sp_v,
    q_ptr, sq_b, sq_g, sq_v,
    y_ptr, sy_b, sy_g,
    c_ptr, sc_b, sc_g,
    seed, position, n_drafts, row,
    G: tl.constexpr, TARGET_ONLY: tl.constexpr, HOST_UNIFORMS: tl.constexpr,
):  # fmt: skip
    """Drafts accepted before the first rejection: accept y_i when u_i * q_i(y_i) < p_i(y_i), q_i(y_i) > 0."""
    num_accepted = (seed * 0).to(tl.int64)
    still = num_accepted == 0
    for i in tl.static_range(G):
        in_use = i < n_drafts  # slots past a row's own draft count may hold padding ids
        y = tl.load(y_ptr + row * sy_b + i * sy_g, mask=in_use, other=0)
        p_y = tl.load(p_ptr + row * sp_b + i * sp_g + y * sp_v, mask=in_use, other=0.0).to(tl.float32)
        if TARGET_ONLY:
            q_y = 1.0
        else:
            q_y = tl.load(q_ptr + row * sq_b + i * sq_g + y * sq_v, mask=in_use, other=1.0).to(tl.float32)
        if HOST_UNIFORMS:
            coin = tl.load(c_ptr + row * sc_b + i * sc_g).to(tl.float32)
        else:
            coin = _uniform_f32(seed, position + i, 0)  # SLOT_ACCEPT
        still = still & (coin * q_y < p_y) & (q_y > 0.0) & in_use
        num_accepted += still.to(tl.int64)
    return num_accepted


@triton.jit
def _tile_weights(
    p_ptr, sp_b, sp_g, sp_v,
    q_ptr, sq_b, sq_g, sq_v,
    y_ptr, sy_b, sy_g,
    row, stop, n_drafts, offs, V,
    TARGET_ONLY: tl.constexpr,
):  # fmt: skip
    """Fixed-point weights of one vocabulary tile at the stop position: (residual, target)."""
    in_vocab = offs < V
    p = tl.load(p_ptr + row * sp_b + stop * sp_g + offs * sp_v, mask=in_vocab, other=0.0).to(tl.float32)
    rejected = stop < n_drafts
    stop_draft = tl.minimum(stop, tl.maximum(n_drafts - 1, 0))
    if TARGET_ONLY:
        y = tl.load(y_ptr + row * sy_b + stop_draft * sy_g, mask=rejected, other=-1)
        q = tl.where(offs == y, 1.0, 0.0)
    else:
        q = tl.load(
            q_ptr + row * sq_b + stop_draft * sq_g + offs * sq_v,
            mask=in_vocab
            & (offs * 0 + stop < n_drafts),  # broadcast first: the interpreter needs a vector mask
            other=0.0,
        ).to(tl.float32)
    residual = tl.maximum(p - q, 0.0)
    # Weights are floor(x * 2**40) (WEIGHT_SCALE); padded lanes load 0 and weigh nothing.
    return (residual * 1099511627776.0).to(tl.int64), (p * 1099511627776.0).to(tl.int64)


@triton.jit
def _chain_tiles_kernel(
    p_ptr, sp_b, sp_g, sp_v,  # [B, G+1, V] target probabilities
    q_ptr, sq_b, sq_g, sq_v,  # [B, G, V] draft probabilities (unused when TARGET_ONLY)
    y_ptr, sy_b, sy_g,  # [B, G] int64 draft tokens
    seed_ptr, pos_ptr, ndraft_ptr,  # [B] int64 each
    c_ptr, sc_b, sc_g,  # [B, >= G] float32 host coins (read only when HOST_UNIFORMS)
    num_accepted_ptr,  # [B] int64, out
    ent_part_ptr,  # [B, G+1, num_tiles] float32, out: -sum p log p over the tile
    tile_weight_ptr,  # [B, num_tiles, 2] int64, out: tile sums of (residual, target) weights
    V,
    G: tl.constexpr, BLOCK_V: tl.constexpr, TARGET_ONLY: tl.constexpr, WITH_ENTROPY: tl.constexpr,
    HOST_UNIFORMS: tl.constexpr,
):  # fmt: skip
    """Phase A, grid (B, num_tiles): accepted count, entropy partials and weight sums of one tile."""
    row = tl.program_id(0)
    tile = tl.program_id(1)
    num_tiles = tl.num_programs(1)
    seed = tl.load(seed_ptr + row)
    position = tl.load(pos_ptr + row)
    n_drafts = tl.load(ndraft_ptr + row)
    stop = _accepted_count(
        p_ptr, sp_b, sp_g, sp_v, q_ptr, sq_b, sq_g, sq_v, y_ptr, sy_b, sy_g, c_ptr, sc_b, sc_g,
        seed, position, n_drafts, row, G, TARGET_ONLY, HOST_UNIFORMS,
    )  # fmt: skip
    if tile == 0:
        tl.store(num_accepted_ptr + row, stop)

    offs = tile * BLOCK_V + tl.arange(0, BLOCK_V)
    if WITH_ENTROPY:
        for i in tl.static_range(G + 1):
            p = tl.load(p_ptr + row * sp_b + i * sp_g + offs * sp_v, mask=offs < V, other=0.0).to(tl.float32)
            safe_p = tl.where(p > 0.0, p, 1.0)  # 0 log 0 = 0, and no log of a padded lane
            tl.store(ent_part_ptr + (row * (G + 1) + i) * num_tiles + tile, -tl.sum(p * tl.log(safe_p)))

    w_residual, w_target = _tile_weights(
        p_ptr, sp_b, sp_g, sp_v, q_ptr, sq_b, sq_g, sq_v, y_ptr, sy_b, sy_g,
        row, stop, n_drafts, offs, V, TARGET_ONLY,
    )  # fmt: skip
    tl.store(tile_weight_ptr + (row * num_tiles + tile) * 2 + 0, tl.sum(w_residual))
    tl.store(tile_weight_ptr + (row * num_tiles + tile) * 2 + 1, tl.sum(w_target))


@triton.jit
def _chain_draw_kernel(
    p_ptr, sp_b, sp_g, sp_v,  # [B, G+1, V]
    q_ptr, sq_b, sq_g, sq_v,  # [B, G, V]
    y_ptr, sy_b, sy_g,  # [B, G]
    seed_ptr, pos_ptr, ndraft_ptr,  # [B]
    final_ptr,  # [B] float32 host uniform of the draw (read only when HOST_UNIFORMS)
    num_accepted_ptr,  # [B] int64, from phase A
    ent_part_ptr,  # [B, G+1, num_tiles] float32, from phase A
    tile_weight_ptr,  # [B, num_tiles, 2] int64, from phase A
    tokens_ptr,  # [B, G+1] int64, out
    entropy_ptr,  # [B, G+1] float32, out
    V, num_tiles, sample_slot,
    G: tl.constexpr, BLOCK_V: tl.constexpr, TILES_POW2: tl.constexpr,
    TARGET_ONLY: tl.constexpr, WITH_ENTROPY: tl.constexpr, HOST_UNIFORMS: tl.constexpr,
):  # fmt: skip
    """Phase B, grid (B,): pick the tile holding the threshold, search it, write tokens and entropy."""
    row = tl.program_id(0)
    seed = tl.load(seed_ptr + row)
    position = tl.load(pos_ptr + row)
    n_drafts = tl.load(ndraft_ptr + row)
    stop = tl.load(num_accepted_ptr + row)

    tiles = tl.arange(0, TILES_POW2)
    in_range = tiles < num_tiles
    w_res = tl.load(tile_weight_ptr + (row * num_tiles + tiles) * 2 + 0, mask=in_range, other=0)
    w_tgt = tl.load(tile_weight_ptr + (row * num_tiles + tiles) * 2 + 1, mask=in_range, other=0)
    use_target = tl.sum(w_res) == 0  # the residual vanished by rounding: draw from p instead
    w = tl.where(use_target, w_tgt, w_res)
    total = tl.sum(w)
    if HOST_UNIFORMS:
        u = tl.load(final_ptr + row).to(tl.float64)
    else:
        u = _uniform_f64(seed, position + stop, sample_slot)
    threshold = tl.minimum((u * total.to(tl.float64)).to(tl.int64), total - 1)
    tile_cum = tl.cumsum(w, 0)
    before = tile_cum <= threshold
    tile = tl.sum(before.to(tl.int64))  # first tile whose running sum passes the threshold
    offset = threshold - tl.sum(tl.where(before, w, 0))

    offs = tile * BLOCK_V + tl.arange(0, BLOCK_V)
    t_res, t_tgt = _tile_weights(
        p_ptr, sp_b, sp_g, sp_v, q_ptr, sq_b, sq_g, sq_v, y_ptr, sy_b, sy_g,
        row, stop, n_drafts, offs, V, TARGET_ONLY,
    )  # fmt: skip
    t_w = tl.where(use_target, t_tgt, t_res)
    index = tl.sum((tl.cumsum(t_w, 0) <= offset).to(tl.int64))
    token = tl.minimum(tile * BLOCK_V + index, V - 1)

    for i in tl.static_range(G + 1):
        if i < G:
            y = tl.load(y_ptr + row * sy_b + i * sy_g)
        else:
            y = stop * 0 - 1
        out = tl.where(i < stop, y, tl.where(i == stop, token, -1))  # PAD_TOKEN_ID
        tl.store(tokens_ptr + row * (G + 1) + i, out)
        if WITH_ENTROPY:
            parts = tl.load(ent_part_ptr + (row * (G + 1) + i) * num_tiles + tiles, mask=in_range, other=0.0)
            tl.store(entropy_ptr + row * (G + 1) + i, tl.sum(parts))
        else:
            tl.store(entropy_ptr + row * (G + 1) + i, float("nan"))
