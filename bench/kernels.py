"""``bebop bench kernels``: chain rejection sampling (ours vs SGLang's) and the fused TV loss.

On a GPU: our Triton kernels against SGLang 0.5.23's ``chain_speculative_sampling_triton`` at
G = 3, V = 151936, and the fused TV loss against the torch reference. On a CPU: the torch twins
(the CPU path the embedded engine uses); Triton timings there would only time the interpreter.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..kernels.rejection import chain_rejection_sample, sample_from_probs
from ..kernels.rng import SLOT_DRAFT
from . import sglang_peer
from .tv_loss import bench_tv_loss


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA-synchronised on a GPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def time_ms_graph(fn: Callable[[], object], device: torch.device, replays: int = 50) -> float:
    """GPU milliseconds per call of ``fn`` captured in a CUDA graph (as a serving loop that
    replays its step as a graph runs it): no Python or launch overhead, only the kernels' time."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / replays


def chain_problem(B: int, G: int, V: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A realistic verify input: peaked target and draft laws (LLM-like), drafts sampled from q."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.randn(B, G + 1, V, generator=g) * 3.0
    target = torch.softmax(logits, -1)
    draft = torch.softmax(logits[:, :G] + torch.randn(B, G, V, generator=g), -1)
    seeds = torch.arange(B, dtype=torch.int64)
    positions = torch.zeros(B, dtype=torch.int64)
    tokens = torch.stack(
        [sample_from_probs(draft[:, i], seeds, positions + i, slot=SLOT_DRAFT) for i in range(G)], 1
    )
    out = {
        "target_probs": target,
        "draft_probs": draft,
        "draft_tokens": tokens,
        "seeds": seeds,
        "positions": positions,
    }
    return {k: v.to(device) for k, v in out.items()}


# What each timed column runs: the full call, then without the input check (one reduction and a
# host sync), then also without the entropy (one read of the target rows fewer).
CHAIN_VARIANTS: dict[str, dict[str, bool]] = {
    "bebop_ms": {},
    "bebop_no_validate_ms": {"validate": False},
    "bebop_no_entropy_ms": {"validate": False, "with_entropy": False},
}


def _chain_rows(
    batches: list[int], G: int, V: int, device: torch.device, repeats: int, sglang_kernel: str | None
):
    peer = None
    if device.type == "cuda":
        peer = sglang_peer.load_sglang_kernel(str(sglang_peer.find_sglang_kernel(sglang_kernel)))
    rows = []
    for B in batches:
        problem = chain_problem(B, G, V, device)
        row: dict[str, Any] = {"batch": B, "gamma": G, "vocab": V}
        backend = "triton" if device.type == "cuda" else "torch"
        for name, options in CHAIN_VARIANTS.items():
            call = functools.partial(chain_rejection_sample, **problem, backend=backend, **options)
            row[name] = time_ms(call, device, repeats)
        if peer is not None:
            # SGLang takes host-made coins; making them is not timed (it is for us: Philox runs in-kernel).
            coins = torch.rand(B, G, device=device)
            final_coins = torch.rand(B, device=device)
            args = sglang_peer.prepare_sglang_chain(
                problem["target_probs"], problem["draft_probs"], problem["draft_tokens"], coins, final_coins
            )
            row["sglang_ms"] = time_ms(
                functools.partial(peer.chain_speculative_sampling_triton, **args), device, repeats
            )
            row["speedup_vs_sglang"] = row["sglang_ms"] / row["bebop_no_validate_ms"]
            # Kernel time alone, each call replayed from a CUDA graph.
            for name, options in (
                ("bebop_graph_ms", {}),
                ("bebop_graph_no_entropy_ms", {"with_entropy": False}),
            ):
                call = functools.partial(
                    chain_rejection_sample, **problem, backend=backend, validate=False, **options
                )
                row[name] = time_ms_graph(call, device)
            row["sglang_graph_ms"] = time_ms_graph(
                functools.partial(peer.chain_speculative_sampling_triton, **args), device
            )
            row["graph_speedup_vs_sglang"] = row["sglang_graph_ms"] / row["bebop_graph_ms"]
        rows.append(row)
        del problem
    return rows


def run_kernel_bench(
    batches: list[int],
    gamma: int,
    vocab: int,
    tv_rows: int | None,
    repeats: int,
    sglang_kernel: str | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Run both benchmarks and return a JSON-ready report."""
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    if dev.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET to benchmark the compiled kernels")
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "chain_rejection_sample": _chain_rows(batches, gamma, vocab, dev, repeats, sglang_kernel),
        # N = 8192 rows at V = 151936 is the GPU target; the autograd reference needs ~30 GB there,
        # more than a 24 GB CPU machine has, so CPU runs default to fewer rows.
        "tv_loss": bench_tv_loss(tv_rows or (8192 if dev.type == "cuda" else 256), vocab, str(dev), repeats),
    }
    return report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable tables of a report from ``run_kernel_bench``."""
    lines = [
        f"device: {report['device']}  torch {report['torch']}",
        "",
        "chain_rejection_sample (ms, median)",
    ]
    keys = [
        "batch",
        "gamma",
        "vocab",
        "bebop_ms",
        "bebop_no_validate_ms",
        "bebop_no_entropy_ms",
        "sglang_ms",
        "speedup_vs_sglang",
    ]
    lines.append(" | ".join(keys))
    for row in report["chain_rejection_sample"]:
        lines.append(" | ".join(_fmt(row.get(k)) for k in keys))
    lines += ["", "tv_loss forward+backward"]
    lines += [f"  {k}: {_fmt(v)}" for k, v in report["tv_loss"].items()]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
