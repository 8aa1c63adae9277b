"""A/B of the engine benchmark's admission: every prompt prefilled alone (before 2026-12-02) against
prompts of similar lengths prefilled together (``scheduler.prefill_groups``), in one process,
alternating, three rounds; tokens/s and rejection/none speedups, T = 1.0, one intra-op thread.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/ab_group_prefill.py
"""

from __future__ import annotations

import statistics

import torch

import bebop.bench.engine as bench
from bebop.model import load_model
from bebop.model.demo_path import demo_model_dir


def main() -> None:
    torch.set_num_threads(1)
    model, prompts = load_model(demo_model_dir()), bench.workload(demo_model_dir())
    grouped = bench.prefill_groups
    modes = {"alone": lambda items, length: [[item] for item in items], "grouped": grouped}
    tokens_per_s: dict[tuple, list[float]] = {}
    for _ in range(3):
        for mode, groups in modes.items():
            bench.prefill_groups = groups  # what run_config admits with
            for batch in (1, 16):
                for spec in ("none", "rejection"):
                    row = bench.run_config(model, spec, prompts, batch, 1.0, 96, 3)
                    tokens_per_s.setdefault((mode, batch, spec), []).append(row["tokens_per_s"])
    bench.prefill_groups = grouped
    for key, runs in sorted(tokens_per_s.items()):
        print(*key, "tokens/s", [round(x) for x in runs], "median", round(statistics.median(runs)))
    for mode in modes:
        for batch in (1, 16):
            spec_runs = tokens_per_s[(mode, batch, "rejection")]
            plain_runs = tokens_per_s[(mode, batch, "none")]
            ratios = [r / n for r, n in zip(spec_runs, plain_runs, strict=True)]
            median = round(statistics.median(ratios), 2)
            print(mode, f"b{batch}", "speedups", [round(x, 2) for x in ratios], "median", median)


if __name__ == "__main__":
    main()
