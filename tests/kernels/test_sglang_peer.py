"""Peer check: our ``chain_rejection_sample`` against SGLang 0.5.23's ``chain_speculative_sampling_triton``.

SGLang's kernel file is extracted from its wheel by ``make test`` (never committed) and loaded here
by path; it imports only triton, so it runs in the CPU interpreter like ours. The two samplers draw
their coins differently (SGLang takes torch uniforms, we use Philox keyed by seed and position), so
they agree token for token only where the answer is forced; elsewhere they must agree in law.

SGLang's layout and how it is read back: ``bebop.bench.sglang_peer``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from bebop.bench import sglang_peer
from bebop.bench.sglang_peer import find_sglang_kernel, load_sglang_kernel
from bebop.kernels.rejection import chain_rejection_sample
from tests.stats import accepted_count_law, assert_counts_follow

pytestmark = pytest.mark.sglang

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_sglang_chain(target_probs, draft_probs, draft_tokens, coins, final_coins):
    """SGLang's chain verify in our layout; skips the test when its kernel file is missing."""
    try:
        path = find_sglang_kernel(repo_root=REPO_ROOT)
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    module = load_sglang_kernel(str(path))
    return sglang_peer.run_sglang_chain(module, target_probs, draft_probs, draft_tokens, coins, final_coins)


def run_ours(target_probs, draft_probs, draft_tokens) -> tuple[torch.Tensor, torch.Tensor]:
    B = target_probs.shape[0]
    seeds = torch.arange(B, dtype=torch.int64)
    positions = torch.zeros(B, dtype=torch.int64)
    out = chain_rejection_sample(target_probs, draft_probs, draft_tokens, seeds, positions, backend="torch")
    return out.tokens, out.num_accepted


# ----------------------------------------------------------------------------- statistics
def assert_chain_layout(tokens, num_accepted, draft_tokens, label: str) -> None:
    """Accepted drafts, then one token in [0, V), then -1 padding."""
    G1 = tokens.shape[1]
    steps = torch.arange(G1)
    n = num_accepted[:, None]
    assert torch.equal(
        torch.where(steps[: G1 - 1] < n, tokens[:, : G1 - 1], -1),
        torch.where(steps[: G1 - 1] < n, draft_tokens, -1),
    ), f"{label}: accepted drafts not copied"
    assert bool((tokens.gather(1, n) >= 0).all()), f"{label}: no sampled token after the drafts"
    assert bool((tokens[steps > n] == -1).all()), f"{label}: no -1 padding after the sampled token"


# ----------------------------------------------------------------------------- a. forced cases
def _forced_problem():
    """Four rows (G = 3, V = 16) whose emitted tokens are forced whatever the coins.

    row 0: p_i == q_i, so every draft passes (u q < q for u < 1); the bonus law p_4 is one-hot at 11.
    row 1: q_1 one-hot at 5 with p_1(5) = 0: rejected at step 1; the residual is p_1, one-hot at 9.
    row 2: drafts 1, 2 have p == q; draft 3 = token 3 has p_3(3) = 0 and is rejected; the residual
           max(p_3 - q_3, 0) with p_3 = 1/2 on {1, 2}, q_3 = 1/2 on {2, 3} is one-hot at 1.
    row 3: p_1 = 1/4 on {1, 2, 3, 7}, q_1 = 1/4 on {1, 2, 3, 4}, draft 4 (p_1(4) = 0) rejected;
           the residual is one-hot at 7, although p_1 puts 3/4 elsewhere.
    """
    G, V = 3, 16
    g = torch.Generator().manual_seed(11)
    p = torch.softmax(torch.randn(4, G + 1, V, generator=g), -1)
    q = p[:, :G].clone()
    drafts = torch.multinomial(q.reshape(-1, V), 1, generator=g).view(4, G)

    def spread(*tokens: int) -> torch.Tensor:
        row = torch.zeros(V)
        row[list(tokens)] = 1.0 / len(tokens)
        return row

    p[0, G] = spread(11)
    p[1, 0], q[1, 0], drafts[1, 0] = spread(9), spread(5), 5
    p[2, 2], q[2, 2], drafts[2, 2] = spread(1, 2), spread(2, 3), 3
    p[3, 0], q[3, 0], drafts[3, 0] = spread(1, 2, 3, 7), spread(1, 2, 3, 4), 4
    expected = torch.full((4, G + 1), -1, dtype=torch.int64)
    expected[0, :G], expected[0, G] = drafts[0], 11
    expected[1, 0] = 9
    expected[2, :2], expected[2, 2] = drafts[2, :2], 1
    expected[3, 0] = 7
    return p, q, drafts, expected, torch.tensor([3, 0, 2, 0])


def test_forced_cases_agree_token_for_token():
    p, q, drafts, expected, expected_accepted = _forced_problem()
    g = torch.Generator().manual_seed(12)
    for trial in range(3):  # several coin draws: the answer must not depend on them
        coins, final_coins = torch.rand(4, 3, generator=g), torch.rand(4, generator=g)
        tokens, num_accepted = run_sglang_chain(p, q, drafts, coins, final_coins)
        assert torch.equal(tokens, expected), f"SGLang, trial {trial}"
        assert torch.equal(num_accepted, expected_accepted), f"SGLang, trial {trial}"
    ours_tokens, ours_accepted = run_ours(p, q, drafts)
    assert torch.equal(ours_tokens, expected)
    assert torch.equal(ours_accepted, expected_accepted)


def test_divergence_draft_prob_above_one():
    """q(y) a hair above 1 (rounding; bf16 softmax can give 1.0039): SGLang's chain kernel always
    rejects such a draft (it requires 0 < q <= 1) and draws the correction from p, where it counts
    q as 0; we accept it when u q < p. Both laws are exact, SGLang just stops the chain early."""
    G, V = 1, 16
    p = torch.zeros(1, G + 1, V)
    p[0, :, 4] = 1.0
    q = torch.zeros(1, G, V)
    q[0, 0, 4] = 1.0 + 2.0**-20
    drafts = torch.tensor([[4]])
    tokens, num_accepted = run_sglang_chain(p, q, drafts, torch.zeros(1, G), torch.full((1,), 0.5))
    assert tokens.tolist() == [[4, -1]] and num_accepted.tolist() == [0]
    ours_tokens, ours_accepted = run_ours(p, q, drafts)
    assert ours_tokens.tolist() == [[4, 4]] and ours_accepted.tolist() == [1]


# ----------------------------------------------------------------------------- b. statistics
STAT_B, STAT_G, STAT_V = 1024, 3, 16


@functools.lru_cache(maxsize=1)
def _stat_problem():
    """One fixed (p, q) replicated over STAT_B rows, drafts y_i ~ q_i per row.

    p and q share a random logit vector (q adds noise), then 3 random tokens per row are zeroed in
    each, and p_i(V - 1) = 0 (SGLang's CDF falls back to token V - 1; a stray one would show).
    """
    G, V = STAT_G, STAT_V
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(G + 1, V, generator=g, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    q = torch.softmax(logits[:G] + 0.6 * torch.randn(G, V, generator=g, dtype=torch.float64), -1)
    p.scatter_(1, torch.rand(G + 1, V, generator=g).argsort(-1)[:, :3], 0.0)
    p[:, V - 1] = 0.0
    q.scatter_(1, torch.rand(G, V, generator=g).argsort(-1)[:, :3], 0.0)
    p, q = (p / p.sum(-1, keepdim=True)).float(), (q / q.sum(-1, keepdim=True)).float()

    target = p.expand(STAT_B, G + 1, V).contiguous()
    draft = q.expand(STAT_B, G, V).contiguous()
    drafts = torch.multinomial(draft.reshape(-1, V), 1, generator=g).view(STAT_B, G)
    p64, q64 = p.double(), q.double()
    rejection_law = accepted_count_law(torch.minimum(p64[:G], q64).sum(-1).tolist())
    # Target-only verify (SGLang's default): draft argmax q, accepted with probability p(argmax q).
    argmax_q = q.argmax(-1)
    target_only_law = accepted_count_law(p64[:G].gather(1, argmax_q[:, None]).squeeze(1).tolist())
    return target, draft, drafts, argmax_q, rejection_law, target_only_law


@functools.lru_cache(maxsize=1)
def _sglang_stat_run():
    target, draft, drafts, *_ = _stat_problem()
    g = torch.Generator().manual_seed(8)
    coins = torch.rand(STAT_B, STAT_G, generator=g)
    final_coins = torch.rand(STAT_B, generator=g)
    return run_sglang_chain(target, draft, drafts, coins, final_coins)


@functools.lru_cache(maxsize=1)
def _ours_stat_run():
    target, draft, drafts, *_ = _stat_problem()
    return run_ours(target, draft, drafts)


RUNS = {"sglang": _sglang_stat_run, "ours": _ours_stat_run}


def test_stat_problem_is_informative():
    """The fixture exercises every branch: all accepted counts are common, some drafts have
    p(y) = 0, and the target-only law is far from the rejection law (the power check needs it)."""
    target, draft, _, _, rejection_law, target_only_law = _stat_problem()
    assert rejection_law.min() > 0.1
    assert bool(((draft[0] > 0) & (target[0, :STAT_G] == 0)).any())
    assert np.abs(rejection_law - target_only_law).max() > 0.3


@pytest.mark.parametrize("sampler", sorted(RUNS))
def test_first_token_follows_target(sampler):
    target, _, drafts, *_ = _stat_problem()
    tokens, num_accepted = RUNS[sampler]()
    assert_chain_layout(tokens, num_accepted, drafts, sampler)
    counts = torch.bincount(tokens[:, 0], minlength=STAT_V).numpy()
    assert_counts_follow(counts, target[0, 0].double().numpy(), f"{sampler}: first token vs p_1")


def _residual_1() -> np.ndarray:
    target, draft, *_ = _stat_problem()
    residual = (target[0, 0].double() - draft[0, 0].double()).clamp_min(0.0)
    return (residual / residual.sum()).numpy()


@pytest.mark.parametrize("sampler", sorted(RUNS))
def test_correction_token_follows_residual(sampler):
    """Rows rejected at draft 1 emit from max(0, p_1 - q_1), normalised (~280 rows). Sharper than
    the first-token check: drawing from p_1 instead would hit the residual's zero bins."""
    tokens, num_accepted = RUNS[sampler]()
    counts = torch.bincount(tokens[num_accepted == 0, 0], minlength=STAT_V).numpy()
    assert_counts_follow(counts, _residual_1(), f"{sampler}: correction token vs residual_1")


@pytest.mark.parametrize("sampler", sorted(RUNS))
def test_accepted_count_follows_rejection_law(sampler):
    *_, rejection_law, _ = _stat_problem()
    _, num_accepted = RUNS[sampler]()
    counts = torch.bincount(num_accepted, minlength=STAT_G + 1).numpy()
    assert_counts_follow(counts, rejection_law, f"{sampler}: accepted counts vs rejection law")


def test_accepted_counts_agree_between_sglang_and_ours():
    sglang_counts = torch.bincount(_sglang_stat_run()[1], minlength=STAT_G + 1).numpy()
    ours_counts = torch.bincount(_ours_stat_run()[1], minlength=STAT_G + 1).numpy()
    # Two-sample chi-square on the 2 x (G + 1) table, 3 degrees of freedom. Bound: p-value > 1e-4,
    # i.e. a false alarm once in 10^4 seeds under equal laws (the seeds are fixed, so the test is
    # deterministic); with n = 1024 per sample, a shift of ~0.07 in a bin of mass ~0.3 falls below it.
    _, p_value, _, _ = chi2_contingency(np.stack([sglang_counts, ours_counts]))
    assert p_value > 1e-4, f"SGLang {sglang_counts} vs ours {ours_counts}: chi-square p = {p_value:.2e}"


# ----------------------------------------------------------------------------- c. power
def test_checks_reject_the_target_only_law():
    """The same checks on target-only verify (draft argmax q, accepted with probability p(y)): the
    emitted tokens are still exact, but the accepted counts follow another law, which both the
    bound checker and the chi-square test must flag."""
    target, _, _, argmax_q, rejection_law, target_only_law = _stat_problem()
    drafts = argmax_q.expand(STAT_B, STAT_G).contiguous()
    _, num_accepted = run_ours(target, None, drafts)
    counts = torch.bincount(num_accepted, minlength=STAT_G + 1).numpy()
    assert_counts_follow(counts, target_only_law, "target-only counts vs their own law")
    with pytest.raises(AssertionError, match="bin"):
        assert_counts_follow(counts, rejection_law, "target-only counts vs rejection law")
    ours_tokens, ours_accepted = _ours_stat_run()
    ours_counts = torch.bincount(ours_accepted, minlength=STAT_G + 1).numpy()
    present = (counts + ours_counts) > 0  # the target-only law may never reach G accepted
    _, p_value, _, _ = chi2_contingency(np.stack([counts, ours_counts])[:, present])
    assert p_value < 1e-4
    # And the residual check: first tokens of all rows follow p_1, not the residual.
    first_counts = torch.bincount(ours_tokens[:, 0], minlength=STAT_V).numpy()
    with pytest.raises(AssertionError, match="bin"):
        assert_counts_follow(first_counts, _residual_1(), "all first tokens vs residual_1")
