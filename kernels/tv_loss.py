"""Total-variation (TV) loss for training MTP draft heads, single-step and end-to-end.

With p = softmax(target_logits) from the frozen backbone (always detached) and
q = softmax(draft_logits) from the draft head, the per-token loss is

    TV(p, q) = 1 - sum_v min(p_v, q_v)

and 1 - TV is exactly the acceptance probability of one draft token under rejection sampling.
Its gradient with respect to the draft logits z has a closed form (differentiate
sum_v min(p_v, q_v) through the softmax):

    dTV/dz_j = -q_j ([q_j <= p_j] - S) = q_j (S - 1 + [q_j > p_j]),   S = sum_v [q_v <= p_v] q_v

so both backends save three floats per row (log-sum-exp of each softmax and S) in forward and
recompute p and q in backward; no [num_rows, vocab_size] intermediate outlives a call.

Shapes used throughout:

    N = num_rows     one row per draft token (batch * draft steps, flattened)
    V = vocab_size
    B = batch        chains in ``e2e_tv_loss``
    S = num_steps    draft steps per chain

Backends (``backend="auto" | "triton" | "torch"``, see ``bebop.kernels._triton.resolve_backend``):
  * triton: ``_tv_loss_forward_kernel`` / ``_tv_loss_backward_kernel``, one program per row,
    tiling the vocabulary in BLOCK_V lanes (two passes over the logits in forward, one in backward);
  * torch:  the twin of the same maths in row chunks (``TORCH_CHUNK_ELEMENTS``), used on CPU.

Both accumulate in float32 (float64 when an input is float64) and return that dtype; the gradient
has the dtype of ``draft_logits``. Every row needs at least one finite logit in each input;
``-inf`` entries (masked or padded vocabulary) are fine.

The ``*_reference`` functions are plain-torch autograd versions for tests and for comparing losses
in training: TV, end-to-end TV, cross-entropy against the soft target, forward and reverse KL.
"""

from __future__ import annotations

from typing import Any

import torch

from ._triton import resolve_backend, tl, triton

# Largest vocabulary tile one Triton program holds at once. 4096 fp32 lanes over 8 warps is
# 16 values per thread for each live tile tensor; untuned, re-check with ``bebop.bench.tv_loss``.
MAX_BLOCK_V = 4096
# Tiles at least this wide launch with 8 warps, narrower ones with 4 (Triton's usual default).
_WIDE_BLOCK_V = 2048
# Elements of one [rows, vocab_size] work buffer of the torch twin: 2**20 fp32 values are 4 MiB and
# forward holds three such buffers, whatever N is. Forward + backward at (512, 152064) fp32 on 2 CPU
# cores took 340 ms for 2**18 .. 2**22 and 560 ms for 2**24 (buffers past the caches).
TORCH_CHUNK_ELEMENTS = 1 << 20
# Per-row statistics saved for backward, stored as rows of one [_NUM_STATS, N] tensor.
_STAT_LSE_P, _STAT_LSE_Q, _STAT_S = 0, 1, 2
_NUM_STATS = 3


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def tv_loss(
    draft_logits: torch.Tensor,  # [N, V] float32 | bfloat16 | float16 | float64
    target_logits: torch.Tensor,  # [N, V] floating, never receives a gradient
    *,
    backend: str = "auto",
) -> torch.Tensor:  # [N] float32 (float64 for float64 inputs)
    """Per-row TV(softmax(target), softmax(draft)) = 1 - sum_v min(p_v, q_v), fused.

    =================  ==========  ====================================================
    argument           shape       notes
    =================  ==========  ====================================================
    draft_logits       [N, V]      floating; the loss is differentiable w.r.t. it
    target_logits      [N, V]      floating; p is treated as a constant (no gradient)
    returns            [N]         float32, or float64 when an input is float64
    =================  ==========  ====================================================

    The gradient is the closed form of the module docstring, never autograd through a softmax;
    on the torch backend rows are processed in chunks so peak memory stays bounded.
    """
    _check_rows(draft_logits, target_logits)
    backend = resolve_backend(backend, draft_logits, target_logits)
    return _TVLossFunction.apply(draft_logits, target_logits, backend)


def e2e_tv_loss(
    draft_logits: torch.Tensor,  # [B, S, V] floating
    target_logits: torch.Tensor,  # [B, S, V] floating, never receives a gradient
    mask: torch.Tensor,  # [B, S] bool or 0/1; nonzero marks a valid draft step
    *,
    backend: str = "auto",
) -> torch.Tensor:  # [] float32 (float64 for float64 inputs)
    """End-to-end multi-step TV loss: one minus the normalised expected accepted length.

    =================  ==========  ====================================================
    argument           shape       notes
    =================  ==========  ====================================================
    draft_logits       [B, S, V]   floating; step j of chain b is row (b, j)
    target_logits      [B, S, V]   floating; no gradient
    mask               [B, S]      bool or 0/1 (nonzero = valid)
    returns            []          scalar, float32 (float64 for float64 inputs)
    =================  ==========  ====================================================

    With a_{b,j} = 1 - TV(p_{b,j}, q_{b,j}) (the acceptance probability of step j)

        L = 1 - sum_{valid (b, j)} prod_{i <= j, (b, i) valid} a_{b,i}  /  #valid (b, j)

    Masked steps count as absent: they contribute a factor 1 to every product and no term of
    their own (their logits get a zero gradient but must still be finite). With a full mask this
    is the paper's ``1 - (1/S) sum_j prod_{i<=j} (1 - TV_i)`` averaged over chains. Earlier
    steps sit in more products, so they weigh more. If no step is valid the loss is 0 with a
    zero gradient (not NaN).

    The vocabulary work runs in ``tv_loss`` on the [B*S, V] rows, so gradients flow through
    every factor via the fused backward; the products are a cumprod on the [B, S] tensor.
    """
    valid = _check_chains(draft_logits, target_logits, mask)
    B, S, V = draft_logits.shape
    tv = tv_loss(draft_logits.reshape(B * S, V), target_logits.reshape(B * S, V), backend=backend).view(B, S)
    accept = torch.where(valid, 1.0 - tv, torch.ones_like(tv))  # [B, S]
    reach = torch.cumprod(accept, dim=1)  # [B, S]: P(steps 0..j of chain b all accepted)
    num_valid = valid.sum()
    loss = 1.0 - (reach * valid).sum() / num_valid.clamp(min=1)
    return torch.where(num_valid > 0, loss, torch.zeros_like(loss))


# --------------------------------------------------------------------------------------------
# Torch references (plain autograd), [N, V] -> [N]
# --------------------------------------------------------------------------------------------


def tv_loss_reference(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """[N, V], [N, V] -> [N]: 1 - sum_v min(p, q) with autograd through both softmaxes."""
    z, t = _reference_inputs(draft_logits, target_logits)
    p = torch.softmax(t, dim=-1)
    q = torch.softmax(z, dim=-1)
    return 1.0 - torch.minimum(p, q).sum(dim=-1)


def e2e_tv_loss_reference(
    draft_logits: torch.Tensor,  # [B, S, V]
    target_logits: torch.Tensor,  # [B, S, V]
    mask: torch.Tensor,  # [B, S]
) -> torch.Tensor:  # []
    """Same loss as ``e2e_tv_loss``, written as a running product over steps (plain autograd)."""
    valid = _check_chains(draft_logits, target_logits, mask)
    B, S, V = draft_logits.shape
    tv = tv_loss_reference(draft_logits.reshape(B * S, V), target_logits.reshape(B * S, V)).view(B, S)
    running = torch.ones(B, dtype=tv.dtype, device=tv.device)  # [B]
    total = torch.zeros((), dtype=tv.dtype, device=tv.device)
    for j in range(S):
        step_valid = valid[:, j]  # [B]
        running = running * torch.where(step_valid, 1.0 - tv[:, j], torch.ones_like(running))
        total = total + torch.where(step_valid, running, torch.zeros_like(running)).sum()
    num_valid = int(valid.sum())
    if num_valid == 0:
        return total * 0.0
    return 1.0 - total / num_valid


def ce_loss_reference(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """[N, V], [N, V] -> [N]: cross-entropy of q against the soft target p, -sum_v p log q."""
    z, t = _reference_inputs(draft_logits, target_logits)
    p = torch.softmax(t, dim=-1)
    log_q = torch.log_softmax(z, dim=-1)
    # 0 * log 0 = 0: a token the target rules out costs nothing even if the draft rules it out.
    return -torch.where(p > 0, p * log_q, torch.zeros_like(p)).sum(dim=-1)


def kl_loss_reference(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """[N, V], [N, V] -> [N]: forward KL(p || q) = sum_v p (log p - log q); same gradient as CE."""
    z, t = _reference_inputs(draft_logits, target_logits)
    return _kl(torch.log_softmax(t, dim=-1), torch.log_softmax(z, dim=-1))


def reverse_kl_loss_reference(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """[N, V], [N, V] -> [N]: reverse KL(q || p) = sum_v q (log q - log p), zero-forcing."""
    z, t = _reference_inputs(draft_logits, target_logits)
    return _kl(torch.log_softmax(z, dim=-1), torch.log_softmax(t, dim=-1))


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per row from log-probabilities; 0 log 0 = 0 where a rules a token out."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_rows(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> None:
    """Raise ValueError unless both are floating [N, V] tensors of one shape on one device."""
    _check_logits(draft_logits, target_logits, "2-D [num_rows, vocab_size]")


def _check_chains(
    draft_logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:  # [B, S] bool on the logits' device
    """Raise ValueError unless logits are floating [B, S, V] and mask is [B, S]; return mask as bool."""
    _check_logits(draft_logits, target_logits, "3-D [batch, num_steps, vocab_size]")
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(draft_logits.shape[:2]):
        raise ValueError(
            f"mask must have shape [batch, num_steps] = {tuple(draft_logits.shape[:2])}, "
            f"got {tuple(mask.shape)}"
        )
    if mask.is_complex():
        raise ValueError(f"mask must be bool or real 0/1, got {mask.dtype}")
    return mask.to(device=draft_logits.device, dtype=torch.bool)


def _check_logits(draft_logits: torch.Tensor, target_logits: torch.Tensor, layout: str) -> None:
    """Both floating tensors of ``layout`` (e.g. "2-D [num_rows, vocab_size]"), one shape, one device."""
    ndim = int(layout[0])
    for name, x in (("draft_logits", draft_logits), ("target_logits", target_logits)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != ndim:
            raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating dtype, got {x.dtype}")
    _check_pair(draft_logits, target_logits)


def _check_pair(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> None:
    if draft_logits.shape != target_logits.shape:
        raise ValueError(
            f"target_logits shape {tuple(target_logits.shape)} must match "
            f"draft_logits shape {tuple(draft_logits.shape)}"
        )
    if draft_logits.shape[-1] == 0:
        raise ValueError("draft_logits must have vocab_size >= 1")
    if draft_logits.device != target_logits.device:
        raise ValueError(
            f"target_logits is on {target_logits.device} but draft_logits is on {draft_logits.device}"
        )


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when any input is float64 (half types always accumulate in float32)."""
    dtype = torch.float32
    for x in tensors:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def _reference_inputs(
    draft_logits: torch.Tensor, target_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated [N, V] inputs in the compute dtype; the target detached."""
    _check_rows(draft_logits, target_logits)
    dtype = _compute_dtype(draft_logits, target_logits)
    return draft_logits.to(dtype), target_logits.detach().to(dtype)


# --------------------------------------------------------------------------------------------
# Autograd function and launchers
# --------------------------------------------------------------------------------------------


class _TVLossFunction(torch.autograd.Function):
    """Fused TV loss: forward saves [_NUM_STATS, N] stats, backward uses the closed-form gradient."""

    @staticmethod
    def forward(
        ctx: Any, draft_logits: torch.Tensor, target_logits: torch.Tensor, backend: str
    ) -> torch.Tensor:
        draft = draft_logits.contiguous()  # [N, V]
        target = target_logits.contiguous()  # [N, V]
        if backend == "triton":
            loss, stats = _triton_forward(draft, target)
        else:
            loss, stats = _torch_forward(draft, target)
        ctx.save_for_backward(draft, target, stats)
        ctx.backend = backend
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        draft, target, stats = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        grad_loss = grad_loss.to(stats.dtype).contiguous()  # [N]; may arrive expanded
        if ctx.backend == "triton":
            grad_draft = _triton_backward(draft, target, stats, grad_loss)
        else:
            grad_draft = _torch_backward(draft, target, stats, grad_loss)
        # p is a constant of the loss: target_logits never receives a gradient.
        return grad_draft, None, None


def _triton_forward(
    draft: torch.Tensor,  # [N, V] contiguous
    target: torch.Tensor,  # [N, V] contiguous
) -> tuple[torch.Tensor, torch.Tensor]:  # loss [N], stats [_NUM_STATS, N]
    assert draft.ndim == 2 and draft.shape == target.shape
    assert draft.is_contiguous() and target.is_contiguous()
    N, V = draft.shape
    dtype = _compute_dtype(draft, target)
    loss = torch.empty(N, dtype=dtype, device=draft.device)
    stats = torch.empty(_NUM_STATS, N, dtype=dtype, device=draft.device)
    if N == 0:
        return loss, stats
    block_v, num_warps = _triton_tiling(V)
    _tv_loss_forward_kernel[(N,)](
        draft,
        target,
        loss,
        stats[_STAT_LSE_P],
        stats[_STAT_LSE_Q],
        stats[_STAT_S],
        draft.stride(0),
        target.stride(0),
        V,
        BLOCK_V=block_v,
        num_warps=num_warps,
    )
    return loss, stats


def _triton_backward(
    draft: torch.Tensor,  # [N, V] contiguous
    target: torch.Tensor,  # [N, V] contiguous
    stats: torch.Tensor,  # [_NUM_STATS, N] compute dtype
    grad_loss: torch.Tensor,  # [N] compute dtype, contiguous
) -> torch.Tensor:  # [N, V] dtype of draft
    assert draft.is_contiguous() and target.is_contiguous() and grad_loss.is_contiguous()
    assert stats.shape == (_NUM_STATS, draft.shape[0]) and grad_loss.shape == (draft.shape[0],)
    N, V = draft.shape
    grad_draft = torch.empty_like(draft)
    if N == 0:
        return grad_draft
    block_v, num_warps = _triton_tiling(V)
    _tv_loss_backward_kernel[(N,)](
        draft,
        target,
        stats[_STAT_LSE_P],
        stats[_STAT_LSE_Q],
        stats[_STAT_S],
        grad_loss,
        grad_draft,
        draft.stride(0),
        target.stride(0),
        grad_draft.stride(0),
        V,
        BLOCK_V=block_v,
        num_warps=num_warps,
    )
    return grad_draft


def _triton_tiling(vocab_size: int) -> tuple[int, int]:
    """BLOCK_V (a power of two, at most MAX_BLOCK_V) and num_warps for one row of vocab_size."""
    block_v = min(triton.next_power_of_2(vocab_size), MAX_BLOCK_V)
    return block_v, 8 if block_v >= _WIDE_BLOCK_V else 4


def _torch_chunks(num_rows: int, vocab_size: int) -> tuple[int, list[slice]]:
    """Rows per chunk of the torch twin and the row slices covering [0, num_rows)."""
    rows = max(1, min(num_rows, TORCH_CHUNK_ELEMENTS // vocab_size))
    return rows, [slice(start, min(start + rows, num_rows)) for start in range(0, num_rows, rows)]


def _torch_forward(
    draft: torch.Tensor,  # [N, V]
    target: torch.Tensor,  # [N, V]
) -> tuple[torch.Tensor, torch.Tensor]:  # loss [N], stats [_NUM_STATS, N]
    """Torch twin of ``_tv_loss_forward_kernel``: same maths and stats, rows in chunks.

    Three [rows, V] work buffers are allocated once and reused by every chunk; each step is a
    single-dtype in-place or ``out=`` op (mixed-dtype ops such as bool masks times floats are
    several times slower on CPU).
    """
    N, V = draft.shape
    dtype = _compute_dtype(draft, target)
    loss = torch.empty(N, dtype=dtype, device=draft.device)
    stats = torch.empty(_NUM_STATS, N, dtype=dtype, device=draft.device)
    rows, chunks = _torch_chunks(N, V)
    q_buf, p_buf, work_buf = (torch.empty(rows, V, dtype=dtype, device=draft.device) for _ in range(3))
    for chunk in chunks:
        n = chunk.stop - chunk.start
        q, p, work = q_buf[:n], p_buf[:n], work_buf[:n]  # [n, V] each
        stats[_STAT_LSE_Q, chunk] = _torch_softmax_into(draft[chunk], q)
        stats[_STAT_LSE_P, chunk] = _torch_softmax_into(target[chunk], p)
        loss[chunk] = 1.0 - torch.minimum(p, q, out=work).sum(dim=-1)
        stats[_STAT_S, chunk] = torch.le(q, p, out=work).mul_(q).sum(dim=-1)  # sum [q <= p] q
    return loss, stats


def _torch_backward(
    draft: torch.Tensor,  # [N, V]
    target: torch.Tensor,  # [N, V]
    stats: torch.Tensor,  # [_NUM_STATS, N]
    grad_loss: torch.Tensor,  # [N]
) -> torch.Tensor:  # [N, V] dtype of draft
    """Torch twin of ``_tv_loss_backward_kernel``: grad_z = q (S - 1 + [q > p]) g, rows in chunks."""
    N, V = draft.shape
    dtype = stats.dtype
    grad_draft = torch.empty_like(draft)
    rows, chunks = _torch_chunks(N, V)
    q_buf, p_buf = (torch.empty(rows, V, dtype=dtype, device=draft.device) for _ in range(2))
    for chunk in chunks:
        n = chunk.stop - chunk.start
        q, p = q_buf[:n], p_buf[:n]  # [n, V] each
        torch.sub(draft[chunk], stats[_STAT_LSE_Q, chunk, None], out=q).exp_()
        torch.sub(target[chunk], stats[_STAT_LSE_P, chunk, None], out=p).exp_()
        g = grad_loss[chunk, None]  # [n, 1]
        coef = torch.gt(q, p, out=p)  # [n, V]: [q > p], overwrites p
        coef = torch.addcmul(g * (stats[_STAT_S, chunk, None] - 1.0), coef, g, out=coef)  # (S-1+[q>p])g
        if grad_draft.dtype == dtype:
            torch.mul(coef, q, out=grad_draft[chunk])
        else:
            grad_draft[chunk] = coef.mul_(q)
    return grad_draft


def _torch_softmax_into(
    logits: torch.Tensor,  # [n, V] any floating dtype
    out: torch.Tensor,  # [n, V] compute dtype, overwritten with softmax(logits)
) -> torch.Tensor:  # [n] log-sum-exp of logits
    """Write softmax(logits) into ``out`` and return the log-sum-exp, m + log sum_v exp(x_v - m)."""
    m = logits.amax(dim=-1, keepdim=True).to(out.dtype)  # [n, 1]
    # While a row is all -inf, m = -inf: shift by 0 instead (as the kernel does) to avoid inf - inf.
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    torch.sub(logits, m, out=out).exp_()
    denom = out.sum(dim=-1, keepdim=True)  # [n, 1]
    out.div_(denom)
    return (m + denom.log()).squeeze(-1)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _tv_loss_forward_kernel(
    draft_ptr,  # [num_rows, vocab_size]
    target_ptr,  # [num_rows, vocab_size]
    loss_ptr,  # [num_rows] float32 | float64 (sets the accumulation dtype)
    lse_p_ptr,  # [num_rows] out: log sum_v exp(target_v)
    lse_q_ptr,  # [num_rows] out: log sum_v exp(draft_v)
    s_ptr,  # [num_rows] out: S = sum_v [q_v <= p_v] q_v
    draft_row_stride,
    target_row_stride,
    vocab_size,
    BLOCK_V: tl.constexpr,
):
    """One program per row; two passes over the vocabulary in BLOCK_V tiles.

    Pass 1 (online softmax, both rows read together):
        m <- max(m, max_tile x),  d <- d * exp(m_old - m) + sum_tile exp(x - m)
        lse = m + log d                                  for x = target (p) and x = draft (q)
    Pass 2:
        p_v = exp(t_v - lse_p),  q_v = exp(z_v - lse_q)
        loss = 1 - sum_v min(p_v, q_v),   S = sum_v [q_v <= p_v] q_v
    Padded lanes load -inf, so p = q = 0 there and they add nothing.
    """
    row = tl.program_id(0).to(tl.int64)
    draft_row = draft_ptr + row * draft_row_stride
    target_row = target_ptr + row * target_row_stride
    acc_dtype = loss_ptr.dtype.element_ty
    offsets = tl.arange(0, BLOCK_V)

    m_p = tl.full([], float("-inf"), acc_dtype)
    d_p = tl.zeros([], acc_dtype)
    m_q = tl.full([], float("-inf"), acc_dtype)
    d_q = tl.zeros([], acc_dtype)
    for start in range(0, vocab_size, BLOCK_V):
        cols = start + offsets
        in_vocab = cols < vocab_size
        t = tl.load(target_row + cols, mask=in_vocab, other=float("-inf")).to(acc_dtype)
        z = tl.load(draft_row + cols, mask=in_vocab, other=float("-inf")).to(acc_dtype)
        m_p, d_p = _online_softmax_step(m_p, d_p, t)
        m_q, d_q = _online_softmax_step(m_q, d_q, z)
    lse_p = m_p + tl.log(d_p)
    lse_q = m_q + tl.log(d_q)

    overlap = tl.zeros([BLOCK_V], acc_dtype)  # per-lane partial sums of min(p, q)
    s_acc = tl.zeros([BLOCK_V], acc_dtype)  # per-lane partial sums of [q <= p] q
    for start in range(0, vocab_size, BLOCK_V):
        cols = start + offsets
        in_vocab = cols < vocab_size
        t = tl.load(target_row + cols, mask=in_vocab, other=float("-inf")).to(acc_dtype)
        z = tl.load(draft_row + cols, mask=in_vocab, other=float("-inf")).to(acc_dtype)
        p = tl.exp(t - lse_p)
        q = tl.exp(z - lse_q)
        overlap += tl.minimum(p, q)
        s_acc += tl.where(q <= p, q, 0.0)

    tl.store(loss_ptr + row, 1.0 - tl.sum(overlap, axis=0))
    tl.store(lse_p_ptr + row, lse_p)
    tl.store(lse_q_ptr + row, lse_q)
    tl.store(s_ptr + row, tl.sum(s_acc, axis=0))


@triton.jit
def _tv_loss_backward_kernel(
    draft_ptr,  # [num_rows, vocab_size]
    target_ptr,  # [num_rows, vocab_size]
    lse_p_ptr,  # [num_rows] from forward (accumulation dtype)
    lse_q_ptr,  # [num_rows] from forward
    s_ptr,  # [num_rows] from forward
    grad_loss_ptr,  # [num_rows] upstream gradient g
    grad_draft_ptr,  # [num_rows, vocab_size] out, dtype of draft
    draft_row_stride,
    target_row_stride,
    grad_row_stride,
    vocab_size,
    BLOCK_V: tl.constexpr,
):
    """One program per row; one pass over the vocabulary recomputing p and q from forward's stats.

    dL/dz_v = -q_v ([q_v <= p_v] - S) * g = q_v (S - 1 + [q_v > p_v]) * g
    """
    row = tl.program_id(0).to(tl.int64)
    draft_row = draft_ptr + row * draft_row_stride
    target_row = target_ptr + row * target_row_stride
    grad_row = grad_draft_ptr + row * grad_row_stride
    acc_dtype = lse_p_ptr.dtype.element_ty
    offsets = tl.arange(0, BLOCK_V)

    lse_p = tl.load(lse_p_ptr + row)
    lse_q = tl.load(lse_q_ptr + row)
    s_minus_one = tl.load(s_ptr + row) - 1.0
    g = tl.load(grad_loss_ptr + row)
    for start in range(0, vocab_size, BLOCK_V):
        cols = start + offsets
        in_vocab = cols < vocab_size
        t = tl.load(target_row + cols, mask=in_vocab, other=float("-inf")).to(acc_dtype)
        z = tl.load(draft_row + cols, mask=in_vocab, other=float("-inf")).to(acc_dtype)
        p = tl.exp(t - lse_p)
        q = tl.exp(z - lse_q)
        grad = q * (s_minus_one + tl.where(q > p, 1.0, 0.0)) * g
        tl.store(grad_row + cols, grad.to(grad_draft_ptr.dtype.element_ty), mask=in_vocab)


@triton.jit
def _online_softmax_step(m, d, x):
    """Fold one tile x into a running max m and denominator d = sum exp(x - m).

        m' = max(m, max_v x_v),  d' = d * exp(m - m') + sum_v exp(x_v - m')
    While every logit so far is -inf, m' is -inf too; shifting by 0 then avoids inf - inf = NaN.
    """
    m_new = tl.maximum(m, tl.max(x, axis=0))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    d = d * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)
    return m_new, d


__all__ = [
    "MAX_BLOCK_V",
    "TORCH_CHUNK_ELEMENTS",
    "ce_loss_reference",
    "e2e_tv_loss",
    "e2e_tv_loss_reference",
    "kl_loss_reference",
    "reverse_kl_loss_reference",
    "tv_loss",
    "tv_loss_reference",
]
