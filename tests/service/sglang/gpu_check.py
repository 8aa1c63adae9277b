"""GPU check of the plugin's kernel against SGLang 0.5.23's, through the same call (not collected).

    python tests/service/sglang/gpu_check.py [--sglang-kernel PATH]

Needs torch with CUDA and triton; the SGLang kernel file is the one ``make test`` extracts
(.cache/sglang-0.5.23/reject_sampling.py). Prints one JSON line: per batch size, whether the
in-place outputs agree (same coins) and both kernels' median times. Bebop is imported from this
checkout through a temporary package tree (the package-dir mapping of pyproject.toml).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def import_bebop_from_checkout() -> None:
    site = Path(tempfile.mkdtemp()) / "bebop"
    site.mkdir()
    for name in ("kernels", "service", "training"):
        (site / name).symlink_to(REPO / name, target_is_directory=True)
    sys.path.insert(0, str(site.parent))


def sglang_kwargs(bs: int, N: int, V: int, gen, torch):
    p = torch.softmax(torch.randn(bs, N, V, device="cuda", generator=gen) * 3, -1)
    q = torch.softmax(torch.randn(bs, N - 1, V, device="cuda", generator=gen) * 3, -1)
    drafts = torch.multinomial(q.reshape(-1, V), 1, generator=gen).view(bs, N - 1)
    next_token = torch.arange(1, N + 1, device="cuda").repeat(bs, 1)
    next_token[:, -1] = -1
    return {
        "predicts": torch.zeros(bs * N, dtype=torch.int32, device="cuda"),
        "accept_index": torch.full((bs, N), -1, dtype=torch.int32, device="cuda"),
        "accept_token_num": torch.zeros(bs, dtype=torch.int32, device="cuda"),
        "candidates": torch.cat([torch.zeros(bs, 1, dtype=torch.long, device="cuda"), drafts], 1),
        "retrive_index": torch.arange(bs * N, device="cuda").view(bs, N),
        "retrive_next_token": next_token,
        "retrive_next_sibling": torch.full((bs, N), -1, device="cuda"),
        "uniform_samples": torch.rand(bs, N, device="cuda", generator=gen),
        "uniform_samples_for_final_sampling": torch.rand(bs, device="cuda", generator=gen),
        "target_probs": p,
        "draft_probs": q,
        "threshold_single": 1.0,
        "threshold_acc": 1.0,
        "deterministic": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--sglang-kernel", default=str(REPO / ".cache" / "sglang-0.5.23" / "reject_sampling.py")
    )
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    import_bebop_from_checkout()
    import functools
    import os

    import torch

    from bebop.bench.sglang_peer import load_sglang_kernel
    from bebop.kernels.rejection import chain_rejection_sample
    from bebop.service.sglang.kernel import chain_speculative_sampling

    def no_entropy(**kw):
        os.environ["BEBOP_SGLANG_ENTROPY"] = "0"
        try:
            chain_speculative_sampling(**kw)
        finally:
            os.environ.pop("BEBOP_SGLANG_ENTROPY")

    def bare(with_entropy, **kw):  # Bebop's kernel alone, no SGLang layout around it
        bs = kw["candidates"].shape[0]
        chain_rejection_sample(
            kw["target_probs"], kw["draft_probs"], kw["candidates"][:, 1:], kw["_zeros"], kw["_zeros"],
            backend="triton", validate=False, with_entropy=with_entropy,
            coins=kw["uniform_samples"], final_coins=kw["uniform_samples_for_final_sampling"],
        )  # fmt: skip
        del bs

    sglang = load_sglang_kernel(args.sglang_kernel).chain_speculative_sampling_triton
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for bs in args.batch:
        kwargs = sglang_kwargs(bs, 4, args.vocab, gen, torch)
        outs, times = {}, {}
        kwargs["_zeros"] = torch.zeros(bs, dtype=torch.long, device="cuda")
        variants = (
            ("bebop", chain_speculative_sampling),
            ("sglang", sglang),
            ("bebop_no_entropy", no_entropy),
            ("bare_kernel", functools.partial(bare, True)),
            ("bare_kernel_no_entropy", functools.partial(bare, False)),
        )
        for name, fn in variants:
            call = {k: v for k, v in kwargs.items() if k != "_zeros" or name.startswith("bare")}
            for key in ("predicts", "accept_index", "accept_token_num"):
                call[key] = kwargs[key].clone()
            fn(**call)
            outs[name] = call
            elapsed = []
            for _ in range(args.repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(**call)
                end.record()
                torch.cuda.synchronize()
                elapsed.append(start.elapsed_time(end))
            times[name] = sorted(elapsed)[len(elapsed) // 2]
        a, b = outs["bebop"], outs["sglang"]
        rows.append(
            {
                "bs": bs,
                "accept_token_num_equal": bool(torch.equal(a["accept_token_num"], b["accept_token_num"])),
                "accept_index_equal": bool(torch.equal(a["accept_index"], b["accept_index"])),
                "predicts_equal_fraction": float((a["predicts"] == b["predicts"]).float().mean()),
                **{f"{name}_ms": round(t, 4) for name, t in times.items()},
            }
        )
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
