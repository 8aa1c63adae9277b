"""A/B of the engine against an older checkout, in one process: the same tokens, and how much faster.

    git worktree add /tmp/base <commit>
    OMP_NUM_THREADS=1 .venv/bin/python scripts/ab_engine.py /tmp/base [--rounds 5] [--batch 1 16]

The older checkout is imported as a second package (``bebop_base``, through a symlink in a temporary
directory; the package imports itself relatively). First, both runners decode the same held-out
prompts with the same seeds in every spec mode, under plain sampling and under a mix of
temperatures, top-k, top-p and a repetition penalty, at batch 1 and 5, and every token and log-prob
must be equal (exit 1 otherwise). Then the two checkouts' ``run_config`` alternate, per batch size, in
rounds of (base none, base rejection, new none, new rejection) on 64 prompts at T = 1.0: a slow
spell of a shared machine falls on both. Prints the mean tokens/s and the rejection/none speedup
of each, and new/base per mode.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import torch

import bebop.bench.engine as new_bench
from bebop.model import load_model as new_load
from bebop.model.demo_path import demo_model_dir


def import_base(checkout: Path):
    """(bench.engine, load_model, ModelRunner, SamplingParams) of the checkout as ``bebop_base``."""
    link_dir = Path(tempfile.mkdtemp(prefix="bebop-ab-"))
    (link_dir / "bebop_base").symlink_to(checkout.resolve())
    sys.path.insert(0, str(link_dir))
    bench = importlib.import_module("bebop_base.bench.engine")
    model = importlib.import_module("bebop_base.model")
    runner = importlib.import_module("bebop_base.service.engine.runner")
    sampling = importlib.import_module("bebop_base.service.engine.sampling")
    return bench, model.load_model, runner.ModelRunner, sampling.SamplingParams


def decode_all(runner_cls, params_cls, model, prompts, spec: str, mixed: bool, batch: int) -> list:
    """Tokens and log-probs of 8 prompts, ``batch`` at a time, 12 steps after the prefill."""

    def params(i: int):
        if not mixed:
            return params_cls(temperature=1.0, max_new_tokens=64)
        extra = {"repetition_penalty": 1.2} if i % 3 == 0 else {}
        return params_cls(
            temperature=[1.0, 0.7, 0.0, 1.3][i % 4],
            top_k=[-1, 20, -1, 5][i % 4],
            top_p=[1.0, 0.9, 1.0, 1.0][i % 4],
            max_new_tokens=64,
            **extra,
        )

    runner = runner_cls(model, batch, 120, spec, 3)
    out = []
    for first in range(0, 8, batch):
        index = list(range(first, min(first + batch, 8)))
        pairs = runner.prefill_group([prompts[i] for i in index], [params(i) for i in index], index)
        states = [s for s, _ in pairs]
        rows = [(list(o.tokens), list(o.logprobs)) for _, o in pairs]
        for _ in range(12):
            for row, step in zip(rows, runner.step(states), strict=True):
                row[0].extend(step.tokens)
                row[1].extend(step.logprobs)
        for state in states:
            runner.release(state)
        out += rows
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base", type=Path, help="the older checkout (a git worktree)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from bebop.service.engine.runner import ModelRunner
    from bebop.service.engine.sampling import SamplingParams

    base_bench, base_load, BaseRunner, BaseParams = import_base(args.base)
    new_model, base_model = new_load(demo_model_dir()), base_load(demo_model_dir())
    prompts = new_bench.workload(demo_model_dir(), args.prompts)
    same = True
    for spec in ("none", "target_only", "rejection"):
        for mixed in (False, True):
            for batch in (1, 5):
                new = decode_all(ModelRunner, SamplingParams, new_model, prompts, spec, mixed, batch)
                old = decode_all(BaseRunner, BaseParams, base_model, prompts, spec, mixed, batch)
                ok = new == old
                same &= ok
                mix = "mixed" if mixed else "plain"
                print(f"same tokens and log-probs: {spec:11s} {mix} batch {batch}: {ok}")
    if not same:
        return 1
    sides = {"base": (base_bench, base_model), "new": (new_bench, new_model)}
    for batch in args.batch:
        rows = {}
        for bench, model in sides.values():  # warm-up
            bench.run_config(model, "rejection", prompts[:2], batch, 1.0, 8, 3)
        for _ in range(args.rounds):
            for name, (bench, model) in sides.items():
                for spec in ("none", "rejection"):  # run_config: what every checkout has
                    row = bench.run_config(model, spec, prompts, batch, 1.0, 96, 3)
                    rows.setdefault((name, spec), []).append(row["tokens_per_s"])
        for name in sides:
            none, rejection = sum(rows[(name, "none")]), sum(rows[(name, "rejection")])
            print(f"batch {batch} {name}: none {none / args.rounds:.0f} tokens/s, rejection "
                  f"{rejection / args.rounds:.0f}, speedup {rejection / none:.3f}")  # fmt: skip
        for spec in ("none", "rejection"):
            gain = sum(rows[("new", spec)]) / sum(rows[("base", spec)])
            print(f"batch {batch} new/base {spec}: {gain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
