"""The engine's model runner in-process: greedy agreement, batch invariance, exactness of the law."""

import pytest
import torch

from bebop.service.engine.runner import ModelRunner
from bebop.service.engine.sampling import SamplingParams
from bebop.service.model import load_model
from bebop.training.demo_path import demo_model_dir
from tests.stats import assert_counts_follow


def generate(model, spec, prompts, seeds, n_tokens, temperature=1.0, max_running=None, top_k=-1, top_p=1.0):
    """First ``n_tokens`` of each prompt, all decoded together by one runner."""
    runner = ModelRunner(model, max_running or len(prompts), 64, spec, 3)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    states, outs = [], []
    for prompt, seed in zip(prompts, seeds, strict=True):
        state, out = runner.prefill(list(prompt), params, seed)
        states.append(state)
        outs.append(list(out.tokens))
    while min(len(o) for o in outs) < n_tokens:
        for out, step in zip(outs, runner.step(states), strict=True):
            out += step.tokens
    return [o[:n_tokens] for o in outs]


@pytest.fixture(scope="module")
def model(quick_model):
    return load_model(quick_model)


def test_greedy_is_identical_in_every_spec_mode(model):
    prompts, seeds = [[5, 6, 7], [8, 9, 10, 11, 12], [40]], [1, 2, 3]
    plain = generate(model, "none", prompts, seeds, 24, temperature=0.0)
    assert generate(model, "target_only", prompts, seeds, 24, temperature=0.0) == plain
    assert generate(model, "rejection", prompts, seeds, 24, temperature=0.0) == plain


@pytest.mark.parametrize("spec", ["none", "target_only", "rejection"])
def test_a_sequence_does_not_depend_on_its_batch(model, spec):
    alone = generate(model, spec, [[5, 6, 7]], [11], 20)
    crowd = generate(model, spec, [[9, 9], [5, 6, 7], [1, 2, 3, 4, 5, 6]], [3, 11, 4], 20)
    assert crowd[1] == alone[0]
    assert generate(model, spec, [[5, 6, 7]], [11], 20) == alone  # and reruns are identical


def _exact_triple_law(model, prompt, temperature, top_pairs=200, top_triples=60):
    """Exact law of the first three sampled tokens from the model's own probabilities: the
    ``top_triples`` likeliest triples (ids as x1 * V^2 + x2 * V + x3) and their probabilities."""

    def law(seqs):
        with torch.no_grad():
            return torch.softmax(model(seqs).logits[:, -1] / temperature, -1).double()

    base = torch.tensor([prompt])
    p1 = law(base)[0]
    V = p1.shape[0]
    p12 = (p1[:, None] * law(torch.cat([base.expand(V, -1), torch.arange(V)[:, None]], 1))).flatten()
    pairs = p12.topk(top_pairs).indices
    seqs = torch.cat([base.expand(top_pairs, -1), (pairs // V)[:, None], (pairs % V)[:, None]], 1)
    p123 = (p12[pairs][:, None] * law(seqs)).flatten()  # [top_pairs * V]
    best = p123.topk(top_triples)
    ids = pairs[best.indices // V] * V + best.indices % V
    return ids, best.values


@pytest.mark.slow
def test_speculative_decoding_samples_the_models_exact_law():
    """Joint law of the first three tokens (the second and third come out of verify steps: accepted
    drafts at positions 1 and 2, or residual/bonus draws) under rejection and target-only
    speculation equals plain sampling's and the exact law. Bound: the 6-sigma rule of tests/stats.py
    in each of the 60 likeliest triples and one bin for the rest of the mass."""
    model = load_model(demo_model_dir())
    prompt = [*range(30, 36)]  # any prompt: the law is computed, not assumed
    n, batch, temperature = 3000, 500, 1.0
    ids, probs = _exact_triple_law(model, prompt, temperature)
    law = torch.cat([probs, (1 - probs.sum()).reshape(1)]).numpy()
    lookup = {int(t): k for k, t in enumerate(ids)}
    V = model.config.vocab_size
    for spec in ("none", "target_only", "rejection"):
        counts = torch.zeros(len(ids) + 1)
        for start in range(0, n, batch):
            outs = generate(
                model, spec, [prompt] * batch, range(start, start + batch), 3, temperature=temperature
            )
            for a, b, c in outs:
                counts[lookup.get((a * V + b) * V + c, len(ids))] += 1
        assert_counts_follow(counts.numpy(), law, f"spec={spec}")
