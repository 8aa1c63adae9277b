"""The engine samples its model's exact law: a G-test over every bin of the joint law of the first
five tokens, which come out of one prefill and one speculative step with G = 3 (three drafts and
the bonus token, or a residual draw at the first rejection).

A small random model (vocabulary 8, two layers, a random MTP head that disagrees with the target)
keeps the exact law enumerable: 8**5 sequences. The reference law is computed independently, from
the model's logits through transformers' logit warpers. The same statistic run on an engine with
the classic bug "resample from p instead of the residual" must reject it: that is the test's power.

Bound: G-test over the bins with expected count >= 5 (the rest pooled into one bin), p-value
> 1e-4 to pass (a false alarm 1 time in 10,000), and the 6-sigma per-bin rule of tests/stats.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from bebop.kernels import SLOT_SAMPLE, draw_from_probs
from bebop.kernels.rng import uniform_f64
from bebop.model import ModelConfig, Qwen3Model
from bebop.model.mtp import mtp_chain_logits
from bebop.service.engine import runner as runner_module
from bebop.service.engine.runner import ModelRunner
from bebop.service.engine.sampling import SamplingParams
from bebop.training.mtp_train import chain_mask, chain_targets
from tests.stats import bound_violations

V, K = 8, 5  # vocabulary, tokens in the joint law
PROMPT = [1, 2, 3]
SAMPLES = 12_000
GROUP = 4_000  # rows prefilled together (one forward) and stepped together


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(7)
    cfg = ModelConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        num_mtp_layers=1,
    )
    m = Qwen3Model(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(12)  # laws between peaked and flat (entropy ~1.3 nats)
    _fit_mtp_head(m)
    return m


def _fit_mtp_head(m: Qwen3Model, iters: int = 5) -> None:
    """A few steps of KL fitting (acceptance ~0.85 per draft), so that every path of a step
    (rejection at each position, and all accepted with the bonus) is taken thousands of times."""
    g = torch.Generator().manual_seed(0)
    seqs = torch.tensor([PROMPT] * 256)
    with torch.no_grad():
        for _ in range(9):
            law = torch.softmax(m(seqs).logits[:, -1], -1)
            seqs = torch.cat([seqs, torch.multinomial(law, 1, generator=g)], 1)
        out = m(seqs)
    L = seqs.shape[1]
    target = chain_targets(out.logits, 3).log_softmax(-1)
    mask = chain_mask(torch.full((len(seqs),), L), L, 3)
    opt = torch.optim.Adam(m.mtp.parameters(), lr=1e-2)
    for _ in range(iters):
        draft = mtp_chain_logits(m, seqs, out.hidden, 3).log_softmax(-1)
        loss = (target.exp() * (target - draft)).sum(-1)[mask].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()


def reference_law(model, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """[V**K] exact probabilities of the first K tokens, transformers' warpers on our logits."""

    def law(seqs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            scores = model(seqs).logits[:, -1].double()
        scores = TemperatureLogitsWarper(temperature)(None, scores)
        if top_k > 0:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(None, scores)
        return torch.softmax(scores, -1)

    joint = torch.ones(1, dtype=torch.float64)
    seqs = torch.tensor([PROMPT])
    for _ in range(K):
        joint = (joint[:, None] * law(seqs)).flatten()  # [prefixes * V]
        n = seqs.shape[0]
        seqs = torch.cat([seqs.repeat_interleave(V, 0), torch.arange(V).repeat(n)[:, None]], 1)
    return joint.numpy()


def sample_counts(model, spec: str, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Counts over the V**K joint outcomes, and of the accepted drafts in the first step."""
    counts = np.zeros(V**K)
    accepted = np.zeros(4)
    for start in range(0, SAMPLES, GROUP):
        runner = ModelRunner(model, GROUP, 16, spec, 3)
        pairs = runner.prefill_group([PROMPT] * GROUP, [params] * GROUP, list(range(start, start + GROUP)))
        states, outs = [s for s, _ in pairs], [list(o.tokens) for _, o in pairs]
        first = True
        while min(len(o) for o in outs) < K:
            steps = runner.step(states)
            for out, step in zip(outs, steps, strict=True):
                out += step.tokens
                if first and spec != "none":
                    accepted[step.drafts_accepted] += 1
            first = False
        ids = np.array([o[:K] for o in outs]) @ (V ** np.arange(K - 1, -1, -1))
        counts += np.bincount(ids, minlength=V**K)
    return counts, accepted


def g_test_p_value(counts: np.ndarray, probs: np.ndarray) -> float:
    """Likelihood-ratio (G) test of counts against probs; bins expecting < 5 pooled into one."""
    expected = counts.sum() * probs / probs.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    g = 2 * np.sum(np.where(obs > 0, obs * np.log(np.where(obs > 0, obs, 1) / exp), 0.0))
    return float(chi2.sf(g, len(obs) - 1))


CASES = [
    ("none", 1.0, -1, 1.0),
    ("target_only", 1.0, -1, 1.0),
    ("rejection", 1.0, -1, 1.0),
    ("rejection", 0.7, 5, 0.9),
    ("target_only", 1.3, 6, 0.8),
    ("none", 0.7, 5, 0.9),
]


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "temperature", "top_k", "top_p"), CASES)
def test_the_joint_law_of_five_tokens_is_exact(model, spec, temperature, top_k, top_p):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=64)
    probs = reference_law(model, temperature, top_k, top_p)
    counts, accepted = sample_counts(model, spec, params)
    assert counts[probs == 0].sum() == 0, "a sequence of probability 0 was sampled"
    p_value = g_test_p_value(counts, probs)
    assert p_value > 1e-4, f"G-test p = {p_value:.2e}"
    assert not bound_violations(counts, probs)
    if spec != "none":  # every path of the first step was taken: rejections at 1..3, and the bonus
        assert (accepted > 100).all(), accepted


def _residual_from_p(real):
    """The classic bug: at a rejection, draw from p instead of max(0, p - q)."""

    def buggy(target_probs, draft_probs, draft_tokens, seeds, positions, **kwargs):
        out = real(target_probs, draft_probs, draft_tokens, seeds, positions, **kwargs)
        G = draft_tokens.shape[1]
        rows = torch.arange(len(seeds))
        stop = out.num_accepted
        redraw = draw_from_probs(target_probs[rows, stop], uniform_f64(seeds, positions + stop, SLOT_SAMPLE))
        rejected = stop < G
        out.tokens[rows[rejected], stop[rejected]] = redraw[rejected]
        return out

    return buggy


@pytest.mark.slow
def test_the_g_test_catches_a_residual_drawn_from_p(model, monkeypatch):
    monkeypatch.setattr(
        runner_module, "chain_rejection_sample", _residual_from_p(runner_module.chain_rejection_sample)
    )
    params = SamplingParams(temperature=1.0, max_new_tokens=64)
    counts, _ = sample_counts(model, "rejection", params)
    assert g_test_p_value(counts, reference_law(model, 1.0, -1, 1.0)) < 1e-6
