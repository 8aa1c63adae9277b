"""The fused TV loss (forward + backward) against its autograd reference; part of ``bebop bench kernels``."""

from __future__ import annotations

import time
from typing import Any

import torch

from ..kernels.tv_loss import tv_loss, tv_loss_reference


def bench_tv_loss(n: int, vocab: int, device: str, repeats: int) -> dict[str, Any]:
    """Time forward + backward of the fused TV loss against ``tv_loss_reference`` (autograd).

    The fused path is the Triton kernel pair on CUDA and the torch twin elsewhere. Inputs are
    float32 [n, vocab] standard-normal logits. Times are means over ``repeats`` calls after one
    warm-up call (which also compiles the kernels). Peak memory is the CUDA allocator's peak above
    what was allocated before the timed calls, in MiB; ``None`` on CPU.
    """
    if n < 1 or vocab < 1 or repeats < 1:
        raise ValueError(f"n, vocab and repeats must be >= 1, got {n}, {vocab}, {repeats}")
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    draft = torch.randn(n, vocab, generator=gen).to(dev)
    target = torch.randn(n, vocab, generator=gen).to(dev)
    backend = "triton" if dev.type == "cuda" else "torch"

    def fused() -> None:
        z = draft.detach().requires_grad_(True)
        tv_loss(z, target, backend=backend).sum().backward()

    def reference() -> None:
        z = draft.detach().requires_grad_(True)
        tv_loss_reference(z, target).sum().backward()

    fused_ms, fused_peak_mb = _time_call(fused, dev, repeats)
    reference_ms, reference_peak_mb = _time_call(reference, dev, repeats)
    return {
        "n": n,
        "vocab": vocab,
        "device": str(dev),
        "fused_ms": fused_ms,
        "reference_ms": reference_ms,
        "speedup": reference_ms / fused_ms if fused_ms > 0 else None,
        "fused_peak_mb": fused_peak_mb,
        "reference_peak_mb": reference_peak_mb,
    }


def _time_call(fn: Any, dev: torch.device, repeats: int) -> tuple[float, float | None]:
    """Mean milliseconds per call of ``fn`` and its peak extra CUDA memory in MiB (None on CPU)."""
    cuda = dev.type == "cuda"
    fn()  # warm-up: Triton compilation, allocator caches
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        baseline = torch.cuda.memory_allocated(dev)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if cuda:
        torch.cuda.synchronize(dev)
    ms = (time.perf_counter() - start) * 1000.0 / repeats
    peak_mb = (torch.cuda.max_memory_allocated(dev) - baseline) / 2**20 if cuda else None
    return ms, peak_mb
