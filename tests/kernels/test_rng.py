"""Philox-4x32-10: known answers, Triton twin equality, uniform ranges and uniformity."""

import numpy as np
import pytest
import torch

from bebop.kernels.rng import SLOT_ACCEPT, SLOT_DRAFT, philox4x32, philox4x32_triton, uniform_f32, uniform_f64
from tests.stats import assert_counts_follow


def test_philox_known_answer_zero_key_and_counter():
    # Random123's published answer for Philox-4x32-10 with an all-zero key and counter.
    zero = torch.zeros(1, dtype=torch.int64)
    words = [int(w) for w in philox4x32(zero, zero, zero, 0)]
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_triton_philox_matches_torch_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    n = 200
    seeds = torch.randint(-(2**62), 2**62, (n,), generator=g)
    seeds[:3] = torch.tensor([0, -1, 2**63 - 1])
    counters = torch.randint(0, 2**40, (n,), generator=g)
    slots = torch.randint(0, 4, (n,), generator=g)
    expected = torch.stack(philox4x32(seeds, counters, counters >> 32, slots), 1)
    assert torch.equal(philox4x32_triton(seeds, counters, slots), expected)


def test_uniforms_lie_in_open_interval_and_differ_by_slot():
    seeds = torch.arange(5000, dtype=torch.int64)
    positions = torch.zeros_like(seeds)
    u = uniform_f32(seeds, positions, SLOT_ACCEPT)
    assert u.dtype == torch.float32 and bool((u > 0).all()) and bool((u < 1).all())
    v = uniform_f64(seeds, positions, SLOT_ACCEPT)
    assert v.dtype == torch.float64 and bool((v >= 0).all()) and bool((v < 1).all())
    assert not torch.equal(u, uniform_f32(seeds, positions, SLOT_DRAFT))


@pytest.mark.parametrize("vary", ["seed", "position"])
def test_uniforms_are_uniform(vary):
    n = 200_000
    idx = torch.arange(n, dtype=torch.int64)
    seeds, positions = (idx, torch.full_like(idx, 7)) if vary == "seed" else (torch.full_like(idx, 7), idx)
    for u in (uniform_f32(seeds, positions, 1).double(), uniform_f64(seeds, positions, 1)):
        counts = torch.bincount((u * 64).long(), minlength=64).numpy()
        assert_counts_follow(counts, np.full(64, 1 / 64), f"uniform over {vary}")
