"""Where a speculative step's time goes: wall time of the runner's parts, one intra-op thread.

    .venv/bin/python scripts/profile_step.py [BATCH] [STEPS]

Decodes BATCH held-out demo prompts (rejection, G = 3, T = 1.0) and wraps the runner's parts
(draft, target forward, MTP forwards, laws, draws, chain verify) with perf-counter timers; prints
milliseconds per step. Nested parts overlap (the draft contains the MTP forwards, laws and draws).
"""

from __future__ import annotations

import collections
import sys
import time

import torch

import bebop.service.engine.runner as runner_module
from bebop.bench.engine import workload
from bebop.model import load_model
from bebop.model.demo_path import demo_model_dir
from bebop.service.engine.sampling import SamplingParams


def main() -> None:
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    torch.set_num_threads(1)
    model = load_model(demo_model_dir())
    prompts = workload(demo_model_dir())
    spent: collections.Counter = collections.Counter()

    def timed(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            spent[label] += time.perf_counter() - start
            return out

        setattr(owner, name, wrapper)

    runner = runner_module.ModelRunner(model, batch, 200, "rejection", 3)
    params = SamplingParams(temperature=1.0, max_new_tokens=10**4)
    states = [runner.prefill(prompts[i % len(prompts)], params, i)[0] for i in range(batch)]
    timed(runner, "_draft", "draft (all of it)")
    timed(runner.model.mtp, "forward", "MTP forwards")
    timed(runner.model, "forward", "target forward")
    timed(runner, "_laws", "laws")
    timed(runner_module, "chain_rejection_sample", "chain verify")
    timed(runner_module, "draw_from_probs", "draft draws")
    for _ in range(3):
        runner.step(states)
    spent.clear()
    start = time.perf_counter()
    for _ in range(steps):
        runner.step(states)
    per_step = (time.perf_counter() - start) / steps * 1e3
    parts = ", ".join(f"{k} {v / steps * 1e3:.2f}" for k, v in spent.most_common())
    print(f"batch {batch}: {per_step:.2f} ms per step; {parts}")


if __name__ == "__main__":
    main()
