"""SGLang 0.5.23's chain rejection sampler as a peer, run on Bebop's layout (tests and benchmarks).

SGLang's ``reject_sampling.py`` imports only triton, so it is loaded by file path, never
vendored: from ``$BEBOP_SGLANG_KERNEL``, an explicit path, or an installed ``sglang``.
Its chain layout (topk 1): ``candidates[b, 0]`` is the root token (never read) and
``candidates[b, 1..G]`` the drafts; ``uniform_samples[b, i - 1]`` is draft i's coin. Accepted
drafts go to ``predicts[retrive_index[b, k]]`` and the slot of each emitted token to
``accept_index[b, k]``; ``accept_token_num`` counts accepted drafts only. So
``predicts[accept_index[b, k]]`` for k <= ``accept_token_num[b]`` is our ``tokens[b, k]``.
"""

from __future__ import annotations

from types import ModuleType

import torch

from ..service.sglang.stock_kernel import SGLANG_VERSION, find_sglang_kernel, load_sglang_kernel

__all__ = [
    "SGLANG_VERSION",
    "find_sglang_kernel",
    "load_sglang_kernel",
    "prepare_sglang_chain",
    "read_sglang_chain",
    "run_sglang_chain",
]

ROOT_TOKEN = 0  # candidates[:, 0]: the last committed token; the kernel never reads it
UNWRITTEN = -7  # predicts sentinel, to check which slots the kernel wrote


def prepare_sglang_chain(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    draft_tokens: torch.Tensor,
    coins: torch.Tensor,
    final_coins: torch.Tensor,
) -> dict[str, object]:
    """SGLang's keyword arguments for one chain verify (buffers built as SGLang builds them).

    target_probs [B, G+1, V] f32, draft_probs [B, G, V] f32, draft_tokens [B, G] int64,
    coins [B, G] f32 (draft i's coin), final_coins [B] f32 (the residual/bonus draw).
    """
    B, G1, _ = target_probs.shape
    device = target_probs.device
    root = torch.full((B, 1), ROOT_TOKEN, dtype=torch.int64, device=device)
    retrive_next_token = torch.arange(1, G1 + 1, dtype=torch.int64, device=device).repeat(B, 1)
    retrive_next_token[:, -1] = -1
    return {
        "predicts": torch.full((B * G1,), UNWRITTEN, dtype=torch.int32, device=device),
        "accept_index": torch.full((B, G1), -1, dtype=torch.int32, device=device),
        "accept_token_num": torch.full((B,), -1, dtype=torch.int32, device=device),
        "candidates": torch.cat([root, draft_tokens], 1),
        "retrive_index": torch.arange(B * G1, dtype=torch.int64, device=device).view(B, G1),
        "retrive_next_token": retrive_next_token,
        "retrive_next_sibling": torch.full((B, G1), -1, dtype=torch.int64, device=device),
        "uniform_samples": coins,
        "uniform_samples_for_final_sampling": final_coins,
        "target_probs": target_probs,
        "draft_probs": draft_probs,
        "threshold_single": 1.0,  # unused by the Triton chain kernel
        "threshold_acc": 1.0,  # unused
        "deterministic": True,  # unused
    }


def read_sglang_chain(kwargs: dict[str, object]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read SGLang's outputs back in our layout: tokens [B, G+1] (drafts, token, -1), num_accepted [B].

    Checks our reading of the layout on every call: the emitted slots are the chain's first
    num_accepted + 1 ``retrive_index`` entries, and the kernel wrote exactly those ``predicts``.
    """
    retrive_index = kwargs["retrive_index"]
    B, G1 = retrive_index.shape
    num_accepted = kwargs["accept_token_num"].long()
    predicts = kwargs["predicts"].view(B, G1)
    emitted = torch.arange(G1, device=retrive_index.device) <= num_accepted[:, None]
    if not bool(((num_accepted >= 0) & (num_accepted < G1)).all()):
        raise AssertionError("SGLang's accept_token_num is out of range")
    if not torch.equal(kwargs["accept_index"].long(), torch.where(emitted, retrive_index, -1)):
        raise AssertionError("SGLang's accept_index does not follow retrive_index")
    if not torch.equal(predicts != UNWRITTEN, emitted):
        raise AssertionError("SGLang wrote predicts outside the emitted slots")
    return torch.where(emitted, predicts.long(), -1), num_accepted


def run_sglang_chain(
    module: ModuleType,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    draft_tokens: torch.Tensor,
    coins: torch.Tensor,
    final_coins: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGLang's ``chain_speculative_sampling_triton`` on our layout (shapes in prepare_sglang_chain)."""
    kwargs = prepare_sglang_chain(target_probs, draft_probs, draft_tokens, coins, final_coins)
    module.chain_speculative_sampling_triton(**kwargs)
    return read_sglang_chain(kwargs)
