"""chain_rejection_sample: Triton twin equality, exactness with real power, degenerate cases, bad input.

Statistical power comes from the torch twin (fast on CPU); the Triton kernel, run by the
interpreter on small grids, must give the same tokens as the twin, so the twin's evidence covers it.
"""

import numpy as np
import pytest
import torch

from bebop.kernels.rejection import chain_rejection_sample, sample_from_probs
from bebop.kernels.rng import SLOT_DRAFT
from tests.stats import accepted_count_law, assert_counts_follow, bound_violations, histogram


def _probs(generator: torch.Generator, *shape: int, zeros: float = 0.0, sharp: float = 1.5) -> torch.Tensor:
    """Random probability rows with a fraction ``zeros`` of exact zeros (never a whole row)."""
    logits = torch.randn(*shape, generator=generator) * sharp
    if zeros:
        drop = torch.rand(*shape, generator=generator) < zeros
        drop[..., 0] = False
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, -1)


def _draft_tokens(q: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Draft tokens sampled from q [B, G, V] with the counter RNG, as the engine does."""
    B, G, _ = q.shape
    cols = [sample_from_probs(q[:, i], seeds, torch.full_like(seeds, i), slot=SLOT_DRAFT) for i in range(G)]
    return torch.stack(cols, 1) if cols else torch.empty((B, 0), dtype=torch.int64)


def _problem(B: int, G: int, V: int, seed: int = 0, zeros: float = 0.2, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    p = _probs(g, B, G + 1, V, zeros=zeros).to(dtype)
    q = _probs(g, B, G, V, zeros=zeros).to(dtype)
    seeds = torch.randint(0, 2**62, (B,), generator=g)
    positions = torch.randint(0, 10_000, (B,), generator=g)
    return p, q, _draft_tokens(q.float(), seeds), seeds, positions


def _both(*args, **kwargs):
    ours = chain_rejection_sample(*args, backend="torch", **kwargs)
    kernel = chain_rejection_sample(*args, backend="triton", **kwargs)
    return ours, kernel


def _assert_same(a, b):
    assert torch.equal(a.tokens, b.tokens), f"\n{a.tokens}\n{b.tokens}"
    assert torch.equal(a.num_accepted, b.num_accepted)
    torch.testing.assert_close(a.entropy, b.entropy, rtol=1e-5, atol=1e-5, equal_nan=True)


# ----------------------------------------------------------------------------- Triton == twin
@pytest.mark.parametrize(
    ("B", "G", "V", "block_v", "target_only"),
    [
        (5, 3, 37, 16, False),
        (4, 3, 37, 16, True),
        (3, 1, 130, 32, False),
        (6, 4, 64, 64, False),
        (3, 0, 50, 16, False),
    ],
)
def test_triton_gives_the_twins_tokens(B, G, V, block_v, target_only):
    p, q, y, seeds, positions = _problem(B, G, V)
    draft = None if target_only else q
    if target_only:
        y = q.argmax(-1)
    ours, kernel = _both(p, draft, y, seeds, positions, block_v=block_v)
    _assert_same(ours, kernel)


def test_triton_matches_twin_with_ragged_drafts_and_bf16():
    p, q, y, seeds, positions = _problem(6, 3, 45, dtype=torch.bfloat16, zeros=0.0)
    num_drafts = torch.tensor([0, 1, 2, 3, 3, 1])
    y[0] = -1  # padding in unused slots must be ignored
    y[1, 1:] = 10_000
    ours, kernel = _both(p, q, y, seeds, positions, num_drafts=num_drafts, block_v=16)
    _assert_same(ours, kernel)
    assert bool((ours.num_accepted <= num_drafts).all())


def test_triton_matches_twin_without_entropy():
    p, q, y, seeds, positions = _problem(3, 2, 40)
    ours, kernel = _both(p, q, y, seeds, positions, with_entropy=False, block_v=16)
    _assert_same(ours, kernel)
    assert bool(kernel.entropy.isnan().all())


def test_triton_matches_twin_on_near_ties():
    # p == q on most tokens and q one ulp above p elsewhere: the accept test u*q < p and the
    # residual max(0, p - q) sit exactly on their boundaries; both backends must agree bit for bit.
    B, G, V = 8, 2, 33
    g = torch.Generator().manual_seed(3)
    p = _probs(g, B, G + 1, V)
    q = p[:, :G].clone()
    bump = torch.rand(B, G, V, generator=g) < 0.3
    q = torch.where(bump, torch.nextafter(q, torch.ones_like(q)), q)
    seeds = torch.arange(B, dtype=torch.int64)
    y = _draft_tokens(q, seeds)
    ours, kernel = _both(p, q, y, seeds, torch.zeros_like(seeds), block_v=16)
    _assert_same(ours, kernel)


@pytest.mark.slow
def test_triton_matches_twin_at_qwen_vocab():
    V = 151936  # Qwen vocabulary: not a multiple of the tile, 38 tiles of 4096
    p, q, y, seeds, positions = _problem(2, 3, V, zeros=0.0)
    ours, kernel = _both(p, q, y, seeds, positions, block_v=4096)
    _assert_same(ours, kernel)


# ----------------------------------------------------------------------------- exactness
def _replicated(p_row: torch.Tensor, q_row: torch.Tensor | None, n: int, target_only: bool = False):
    """n independent requests on the same fixed per-position laws p [G+1, V], q [G, V]."""
    seeds = torch.arange(n, dtype=torch.int64) * 7919 + 11
    positions = torch.full((n,), 100, dtype=torch.int64)
    p = p_row.expand(n, *p_row.shape).contiguous()
    q = q_row.expand(n, *q_row.shape).contiguous()
    y = q.argmax(-1) if target_only else _draft_tokens(q, seeds)
    out = chain_rejection_sample(p, None if target_only else q, y, seeds, positions, backend="torch")
    return out, p, q


def _check_exact(out, p_row: torch.Tensor, alphas: torch.Tensor, label: str):
    G1, V = p_row.shape
    assert_counts_follow(
        histogram(out.num_accepted, G1), accepted_count_law(alphas), f"{label}: accepted count"
    )
    for i in range(G1):
        emitted = out.tokens[:, i][out.num_accepted >= i]  # the token at position i exists
        assert_counts_follow(histogram(emitted, V), p_row[i].double(), f"{label}: token at position {i}")


N_DRAWS = 200_000


@pytest.mark.parametrize("case", ["random", "p_equals_q", "one_hot_q", "zeros_in_q", "q_over_one"])
def test_rejection_mode_is_exact(case):
    g = torch.Generator().manual_seed(5)
    G, V = 3, 12
    p = _probs(g, G + 1, V, zeros=0.25)
    q = _probs(g, G, V, zeros=0.0)
    if case == "p_equals_q":
        q = p[:G].clone()
    elif case == "one_hot_q":
        q = torch.nn.functional.one_hot(torch.tensor([1, 4, 7]), V).float()
    elif case == "zeros_in_q":
        q = _probs(g, G, V, zeros=0.6)
    elif case == "q_over_one":
        # Sums slightly above 1 after rounding; SGLang's kernel rejects any draft whose q > 1.
        q = q * (1 + 4e-7)
    out, _, qq = _replicated(p, q, N_DRAWS)
    alphas = torch.minimum(p[:G], qq[0]).sum(-1).clamp(max=1)
    if case == "p_equals_q":
        assert bool((out.num_accepted == G).all())
    _check_exact(out, p, alphas, case)


def test_target_only_mode_is_exact():
    g = torch.Generator().manual_seed(6)
    G, V = 3, 10
    p = _probs(g, G + 1, V, zeros=0.2)
    q = _probs(g, G, V)
    out, _, _ = _replicated(p, q, N_DRAWS, target_only=True)
    alphas = p[torch.arange(G), q.argmax(-1)]  # target-only accepts argmax q with probability p(y)
    _check_exact(out, p, alphas, "target_only")


def test_statistical_check_has_power_against_a_wrong_residual():
    # A classic bug: on rejection, resample from p instead of the residual max(0, p - q).
    # The first token's law is then biased towards the draft; the check must see it.
    g = torch.Generator().manual_seed(7)
    p = _probs(g, 2, 8)
    q = _probs(g, 1, 8)
    alpha = torch.minimum(p[0], q[0]).sum()
    wrong_law = torch.minimum(p[0], q[0]) + (1 - alpha) * p[0]  # accept part + p-resample part
    counts = np.round(N_DRAWS * wrong_law.double().numpy())  # the wrong sampler's expected counts
    assert bound_violations(counts, p[0].double())


def test_sample_from_probs_is_exact_and_never_draws_zeros():
    g = torch.Generator().manual_seed(8)
    probs = _probs(g, 20, zeros=0.4)
    n = N_DRAWS
    seeds = torch.arange(n, dtype=torch.int64)
    tokens = sample_from_probs(probs.expand(n, 20).contiguous(), seeds, torch.zeros_like(seeds))
    assert_counts_follow(histogram(tokens, 20), probs.double(), "sample_from_probs")


@pytest.mark.slow
def test_exact_at_qwen_vocab_with_mass_across_tiles():
    # Mass on tokens in different tiles, the last id among them, the rest spread thinly.
    V, G, n = 151936, 1, 1500
    heavy = torch.tensor([0, 4095, 4096, 80_000, V - 1])
    p = torch.full((G + 1, V), 1e-7)
    p[:, heavy] = torch.tensor([[0.3, 0.1, 0.2, 0.15, 0.25], [0.1, 0.1, 0.1, 0.1, 0.6]])
    p = p / p.sum(-1, keepdim=True)
    q = torch.full((G, V), 1e-7)
    q[:, heavy] = torch.tensor([[0.05, 0.4, 0.05, 0.3, 0.2]])
    q = q / q.sum(-1, keepdim=True)
    out, _, _ = _replicated(p, q, n)
    bins = torch.full((V,), len(heavy), dtype=torch.int64)  # every light token in one bin
    bins[heavy] = torch.arange(len(heavy))
    law = torch.cat([p[0, heavy], p[0].sum().reshape(1) - p[0, heavy].sum()]).double()
    assert_counts_follow(histogram(bins[out.tokens[:, 0]], len(heavy) + 1), law, "first token, V=151936")
    alpha = torch.minimum(p[0], q[0]).sum()
    assert_counts_follow(
        histogram(out.num_accepted, 2), accepted_count_law(alpha.reshape(1)), "accepted, V=151936"
    )


# ----------------------------------------------------------------------------- invariance
def test_a_row_does_not_depend_on_its_batch():
    p, q, y, seeds, positions = _problem(7, 3, 29)
    full = chain_rejection_sample(p, q, y, seeds, positions, backend="torch")
    perm = torch.tensor([6, 2, 0, 5, 1, 3, 4])
    shuffled = chain_rejection_sample(
        p[perm], q[perm], y[perm], seeds[perm], positions[perm], backend="torch"
    )
    assert torch.equal(shuffled.tokens, full.tokens[perm])
    alone = chain_rejection_sample(
        p[3:4], q[3:4], y[3:4], seeds[3:4], positions[3:4], backend="triton", block_v=16
    )
    assert torch.equal(alone.tokens, full.tokens[3:4])


def test_same_inputs_same_tokens_and_seeds_matter():
    p, q, y, seeds, positions = _problem(64, 3, 20)
    a = chain_rejection_sample(p, q, y, seeds, positions)
    b = chain_rejection_sample(p, q, y, seeds, positions)
    assert torch.equal(a.tokens, b.tokens)
    c = chain_rejection_sample(p, q, y, seeds + 1, positions)
    assert not torch.equal(a.tokens, c.tokens)


def test_output_layout_and_entropy():
    p, q, y, seeds, positions = _problem(50, 3, 25)
    out = chain_rejection_sample(p, q, y, seeds, positions)
    for b in range(50):
        k = int(out.num_accepted[b])
        assert torch.equal(out.tokens[b, :k], y[b, :k])
        assert 0 <= int(out.tokens[b, k]) < 25
        assert bool((out.tokens[b, k + 1 :] == -1).all())
    expected = -(p * p.clamp_min(1e-30).log()).sum(-1)
    torch.testing.assert_close(out.entropy, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- bad input
def _bad(name: str, **override):
    p, q, y, seeds, positions = _problem(2, 2, 10)
    args = {"target_probs": p, "draft_probs": q, "draft_tokens": y, "seeds": seeds, "positions": positions}
    args.update(override)
    with pytest.raises(ValueError, match=name):
        chain_rejection_sample(**args)


def test_bad_input_names_the_argument():
    p, q, y, seeds, positions = _problem(2, 2, 10)
    _bad("target_probs", target_probs=p[0])
    _bad("target_probs", target_probs=p.long())
    _bad("draft_probs", draft_probs=q[:, :1])
    _bad("draft_probs", draft_probs=q.double())
    _bad("draft_tokens", draft_tokens=y[:, :1])
    _bad("draft_tokens", draft_tokens=y.int())
    _bad("draft_tokens", draft_tokens=torch.full_like(y, 10))
    _bad("draft_tokens", draft_tokens=torch.full_like(y, -3))
    _bad("seeds", seeds=seeds[:1])
    _bad("positions", positions=positions.float())
    nan_p = p.clone()
    nan_p[1, 0, 3] = float("nan")
    _bad("target_probs", target_probs=nan_p)
    _bad("target_probs", target_probs=p * 3)
    _bad("draft_probs", draft_probs=-q)
    _bad("num_drafts", num_drafts=torch.tensor([3, 0]))
    zero_at_draft = q.clone()
    zero_at_draft[0, 0, y[0, 0]] = 0.0
    zero_at_draft[0, 0] /= zero_at_draft[0, 0].sum()
    _bad("draft_tokens", draft_probs=zero_at_draft)
    # G = 0 with drafts given: shapes disagree.
    _bad("draft_tokens", target_probs=p[:, :1], draft_probs=q[:, :0])
    _bad("backend", backend="cuda-please")
