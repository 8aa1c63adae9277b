"""Statistical checks with a stated bound, shared by the sampling tests.

The bound: for n draws from a law with bin probability p,
``|count - n p| <= 6 sqrt(n p (1 - p)) + 5`` in every bin, and a bin of probability 0 is never hit.
Six standard deviations make a false alarm about 2e-9 per bin, so suites of thousands of bins stay
quiet, while a real bias of size d is caught once ``n d`` clears ``6 sqrt(n p) + 5``.
"""

from __future__ import annotations

import numpy as np
import torch


def bound_violations(counts: np.ndarray | torch.Tensor, probs: np.ndarray | torch.Tensor) -> list[str]:
    """Bins where ``counts`` (n draws in total) break the 6-sigma bound around ``probs``."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    n = counts.sum()
    expected = n * probs
    slack = 6.0 * np.sqrt(n * probs * (1.0 - probs)) + 5.0
    bad = []
    for k in range(len(probs)):
        if probs[k] == 0.0 and counts[k] > 0:
            bad.append(f"bin {k}: probability 0 but drawn {int(counts[k])} times")
        elif abs(counts[k] - expected[k]) > slack[k]:
            bad.append(f"bin {k}: count {int(counts[k])}, expected {expected[k]:.1f} +- {slack[k]:.1f}")
    return bad


def assert_counts_follow(
    counts: np.ndarray | torch.Tensor, probs: np.ndarray | torch.Tensor, label: str
) -> None:
    """Assert that ``counts`` follow ``probs`` within the bound in every bin."""
    bad = bound_violations(counts, probs)
    assert not bad, f"{label}: " + "; ".join(bad[:8])


def histogram(values: torch.Tensor, num_bins: int) -> np.ndarray:
    """Counts of the integer values in [0, num_bins)."""
    return torch.bincount(values.flatten(), minlength=num_bins)[:num_bins].numpy()


def accepted_count_law(accept_rates: torch.Tensor | list[float]) -> np.ndarray:
    """Law of a chain's accepted count: [1 - a1, a1 (1 - a2), ..., a1 ... aG] for acceptances a_i."""
    rates = accept_rates.tolist() if isinstance(accept_rates, torch.Tensor) else list(accept_rates)
    law, alive = [], 1.0
    for a in rates:
        law.append(alive * (1.0 - a))
        alive *= a
    return np.array([*law, alive])
