"""Bebop's chain rejection sampler behind SGLang 0.5.23's ``chain_speculative_sampling_triton``.

SGLang's verify (``eagle_sample``, sglang/srt/speculative/eagle_utils.py:712-756) calls the
function with keyword arguments and reads only the in-place outputs; the return value is ignored.
Chain layout (topk 1), N = draft steps + 1:

    predicts            [bs * N]     int32  out: token at each emitted slot ``retrive_index[b, k]``
    accept_index        [bs, >= N]   int32  out: ``retrive_index[b, k]`` for k <= accepted; rest untouched
    accept_token_num    [bs]         int32  out: accepted drafts (the final token not counted)
    candidates          [bs, N]      int64  root token, then the N - 1 drafts
    retrive_index       [bs, N]      int64  flat slot of each chain node
    retrive_next_token  [bs, N]      int64  unused by a chain (as in SGLang's kernel)
    retrive_next_sibling[bs, N]      int64  unused by a chain
    uniform_samples     [bs, >= N-1] f32    coin of draft i in column i - 1
    uniform_samples_for_final_sampling [bs] f32  uniform of the residual/bonus draw
    target_probs        [bs, N, V]   f32    the sampling law: penalties, bias, grammar, temperature,
                                            top-k and top-p already applied (eagle_utils.py:723-745)
    draft_probs         [bs, >= N-1, V]     the draft law q of each draft

Randomness: SGLang's uniforms are used as they come (the package docstring says why):
``_verify_coins`` (eagle_utils.py:457-482) derives them from ``sampling_seed`` with
murmur_hash32(seed, seq_len, column) when the request has a seed, and from ``torch.rand``
otherwise. Keeping them keeps SGLang's seeding contract (a seeded request gives the same tokens
with or without the plugin, up to the last ulp of the residual CDF) and its separation from the
draft stream, and lets the tests replay SGLang's own kernel on the same coins. What Bebop's kernel
adds is everything else: the vocabulary tiled over many programs (a batch of 1 fills the GPU),
one read of the vocabulary instead of two passes, an integer CDF whose draw does not depend on
summation order, and the target entropy of every position from the same read.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import torch

from ...kernels._triton import tl, triton, triton_usable
from ...kernels.rejection import chain_rejection_sample

logger = logging.getLogger(__name__)

# Set BEBOP_SGLANG_ENTROPY=0 to skip the entropy read (every target row, once) on the verify path.
ENTROPY_ENV = "BEBOP_SGLANG_ENTROPY"
# What the kernel cannot do is delegated to SGLang's own kernel, saying why once per reason.
_logged_reasons: set[str] = set()
_lock = threading.Lock()


@dataclass
class VerifyResult:
    """The last verify of this process, for the statistics hook (device tensors, not synced)."""

    num_accepted: torch.Tensor  # [bs] int64
    entropy: torch.Tensor  # [bs, N] float32, nats (NaN when the entropy read is off)


_last = threading.local()


def take_last_result() -> VerifyResult | None:
    """The result of the last ``chain_speculative_sampling`` on this thread, once (then None)."""
    result = getattr(_last, "result", None)
    _last.result = None
    return result


def chain_speculative_sampling(
    predicts: torch.Tensor,
    accept_index: torch.Tensor,
    accept_token_num: torch.Tensor,
    candidates: torch.Tensor,
    retrive_index: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    uniform_samples: torch.Tensor,
    uniform_samples_for_final_sampling: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    threshold_single: float,
    threshold_acc: float,
    deterministic: bool,
    *,
    block_verification: bool = False,
) -> None:
    """Drop-in for SGLang's ``chain_speculative_sampling_triton`` (shapes in the module docstring).

    Block verification (arXiv 2403.10444) accepts by a different rule that Bebop's kernel does not
    implement: those calls go to SGLang's own kernel, with the reason logged once.
    """
    if block_verification:
        _delegate("block_verification=True: Bebop's kernel verifies token by token")
        _sglang_original()(
            predicts, accept_index, accept_token_num, candidates, retrive_index,
            retrive_next_token, retrive_next_sibling, uniform_samples,
            uniform_samples_for_final_sampling, target_probs, draft_probs,
            threshold_single, threshold_acc, deterministic, block_verification=True,
        )  # fmt: skip
        return
    if threshold_single != 1.0 or threshold_acc != 1.0:
        # SGLang's Triton chain kernel ignores them too (reject_sampling.py:242-259); say so once.
        _note(f"thresholds ({threshold_single}, {threshold_acc}) are ignored by rejection sampling")

    bs, N = candidates.shape
    G = N - 1
    V = target_probs.shape[-1]
    if target_probs.shape != (bs, N, V) or draft_probs.shape[0] != bs or draft_probs.shape[1] < G:
        raise ValueError(
            f"chain verify expects target_probs [bs, N, V] and draft_probs [bs, >= N-1, V], got "
            f"{tuple(target_probs.shape)} and {tuple(draft_probs.shape)} "
            f"for candidates {tuple(candidates.shape)}"
        )
    q = draft_probs[:, :G]
    if q.dtype != target_probs.dtype:
        q = q.to(target_probs.dtype)
    drafts = candidates[:, 1:]
    if drafts.dtype != torch.int64:
        drafts = drafts.long()
    coins = uniform_samples if uniform_samples.dtype == torch.float32 else uniform_samples.float()
    final = uniform_samples_for_final_sampling.reshape(bs)
    if final.dtype != torch.float32:
        final = final.float()
    unused, num_drafts = _constants(bs, G, target_probs.device)
    use_triton = triton_usable(target_probs, q, coins)
    out = chain_rejection_sample(
        target_probs, q, drafts, unused, unused,
        num_drafts=num_drafts,
        backend="triton" if use_triton else "torch",
        with_entropy=os.environ.get(ENTROPY_ENV, "1") != "0",
        validate=False,  # no host sync on the serving path; SGLang built these tensors
        coins=coins, final_coins=final,
    )  # fmt: skip
    if use_triton:
        _write_outputs_triton(
            out.tokens, out.num_accepted, retrive_index, predicts, accept_index, accept_token_num
        )
    else:
        _write_outputs_torch(
            out.tokens, out.num_accepted, retrive_index, predicts, accept_index, accept_token_num
        )
    _last.result = VerifyResult(num_accepted=out.num_accepted, entropy=out.entropy)


_constant_cache: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _constants(bs: int, G: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Read-only inputs kept between calls (two fill launches fewer per verify): zeros [bs] int64
    for the unused seeds and positions, and num_drafts [bs] int64 = G."""
    key = (bs, G, device)
    if key not in _constant_cache:
        _constant_cache[key] = (
            torch.zeros((bs,), dtype=torch.int64, device=device),
            torch.full((bs,), G, dtype=torch.int64, device=device),
        )
    return _constant_cache[key]


# ----------------------------------------------------------------------------- delegation
def _note(reason: str) -> None:
    with _lock:
        if reason not in _logged_reasons:
            _logged_reasons.add(reason)
            logger.warning("bebop sglang plugin: %s", reason)


def _delegate(reason: str) -> None:
    _note(f"delegating to SGLang's chain_speculative_sampling_triton: {reason}")


def _sglang_original():
    """SGLang's own kernel, loaded by file path so that the patch cannot reach it."""
    from .stock_kernel import find_sglang_kernel, load_sglang_kernel

    return load_sglang_kernel(str(find_sglang_kernel())).chain_speculative_sampling_triton


# ----------------------------------------------------------------------------- outputs
def _write_outputs_torch(
    tokens: torch.Tensor,  # [bs, N] int64: accepted drafts, the final token, then -1
    num_accepted: torch.Tensor,  # [bs] int64
    retrive_index: torch.Tensor,  # [bs, N]
    predicts: torch.Tensor,  # [bs * N] int32, out
    accept_index: torch.Tensor,  # [bs, >= N] int32, out
    accept_token_num: torch.Tensor,  # [bs] int32, out
) -> None:
    """SGLang's in-place outputs from Bebop's (tokens, num_accepted); slots not emitted are untouched."""
    bs, N = tokens.shape
    emitted = torch.arange(N, device=tokens.device) <= num_accepted[:, None]  # [bs, N]
    accept_token_num.copy_(num_accepted)
    accept_index[:, :N].copy_(torch.where(emitted, retrive_index.to(accept_index.dtype), accept_index[:, :N]))
    slots = retrive_index.reshape(-1).long()
    kept = predicts.index_select(0, slots).view(bs, N)
    predicts.scatter_(0, slots, torch.where(emitted, tokens.to(predicts.dtype), kept).reshape(-1))


def _write_outputs_triton(
    tokens: torch.Tensor,
    num_accepted: torch.Tensor,
    retrive_index: torch.Tensor,
    predicts: torch.Tensor,
    accept_index: torch.Tensor,
    accept_token_num: torch.Tensor,
) -> None:
    """One launch instead of the torch version's handful (shapes in ``_write_outputs_torch``)."""
    bs, N = tokens.shape
    _write_outputs_kernel[(bs,)](
        tokens, num_accepted,
        retrive_index, *retrive_index.stride(),
        predicts, accept_index, *accept_index.stride(), accept_token_num,
        N=N,
    )  # fmt: skip


@triton.jit
def _write_outputs_kernel(
    tokens_ptr,  # [bs, N] int64, contiguous
    num_accepted_ptr,  # [bs] int64
    ri_ptr, sri_b, sri_n,  # [bs, N] retrive_index
    predicts_ptr,  # [bs * N] int32, out
    ai_ptr, sai_b, sai_n,  # [bs, >= N] accept_index, out
    atn_ptr,  # [bs] int32 accept_token_num, out
    N: tl.constexpr,
):  # fmt: skip
    """Grid (bs,): the emitted slots k <= num_accepted get their token and their accept_index entry."""
    row = tl.program_id(0)
    n = tl.load(num_accepted_ptr + row)
    tl.store(atn_ptr + row, n.to(atn_ptr.dtype.element_ty))
    for k in tl.static_range(N):
        emit = k <= n
        slot = tl.load(ri_ptr + row * sri_b + k * sri_n)
        token = tl.load(tokens_ptr + row * N + k)
        tl.store(ai_ptr + row * sai_b + k * sai_n, slot.to(ai_ptr.dtype.element_ty), mask=emit)
        tl.store(predicts_ptr + slot, token.to(predicts_ptr.dtype.element_ty), mask=emit)
