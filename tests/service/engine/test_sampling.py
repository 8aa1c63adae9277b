"""The target laws (``target_probs``): against transformers' warpers, batch independence, greedy."""

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from bebop.service.engine.sampling import GREEDY_TEMPERATURE, target_probs


def laws(logits, temperature, top_k, top_p):
    n = logits.shape[0]
    return target_probs(
        logits,
        torch.full((n,), float(temperature)),
        torch.full((n,), top_k, dtype=torch.int64),
        torch.full((n,), float(top_p)),
    )


def reference_law(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """An independent implementation: transformers' warpers in SGLang's order (temperature, top-k,
    top-p on the top-k law), then softmax."""
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, -1)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, -1, 1.0), (0.7, -1, 1.0), (1.3, 5, 1.0), (1.0, -1, 0.8), (0.6, 7, 0.9), (2.0, 40, 0.5)],
)
def test_laws_match_transformers_warpers(temperature, top_k, top_p):
    logits = torch.randn(6, 97, generator=torch.Generator().manual_seed(3)) * 3
    ours = laws(logits, temperature, top_k, top_p)
    ref = reference_law(logits, temperature, top_k, top_p)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(ours > 0, ref > 0)  # the same tokens are allowed


def test_a_top_p_one_row_is_bit_identical_whatever_its_batch():
    """Rows without top-k/top-p must not take the sort branch's float32 cumsum, which reaches 1.0
    before the tail at a large vocabulary and used to drop it."""
    V = 151936
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, V, generator=g) * 6  # peaked, as an LLM's laws are
    alone = laws(logits[:1], 1.0, -1, 1.0)
    batch = target_probs(
        logits,
        torch.ones(3),
        torch.tensor([-1, 20, -1]),
        torch.tensor([1.0, 1.0, 0.9]),
    )
    assert torch.equal(batch[0], alone[0])
    assert int((batch[0] > 0).sum()) == int((torch.softmax(logits[0], -1) > 0).sum())
    # and a top_p = 1 row taken through the sort branch with others (the index given) keeps its tail
    forced = target_probs(
        logits, torch.ones(3), torch.tensor([-1, 20, -1]), torch.tensor([1.0, 1.0, 0.9]), torch.arange(3)
    )
    assert torch.equal(forced[0], alone[0])


@pytest.mark.parametrize("temperature", [0.0, 1e-38, 1e-20, GREEDY_TEMPERATURE / 2])
def test_tiny_temperatures_are_greedy(temperature):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 50
    probs = laws(logits, temperature, -1, 1.0)
    assert torch.isfinite(probs).all()
    assert torch.equal(probs, torch.nn.functional.one_hot(logits.argmax(-1), 50).float())


def test_the_greedy_threshold_itself_samples():
    logits = torch.tensor([[0.0, 1e-6]])
    probs = laws(logits, GREEDY_TEMPERATURE, -1, 1.0)
    assert torch.isfinite(probs).all() and 0 < float(probs[0, 0]) < 1


def test_the_engine_shortcuts_give_the_same_laws_bit_for_bit():
    """temperature None (every row at 1) skips the division, any_greedy=False the greedy select,
    an empty filter_rows the sort: each must give exactly the law of the general path."""
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(4)) * 4
    off_k, off_p = torch.full((5,), -1), torch.ones(5)
    general = target_probs(logits, torch.ones(5), off_k, off_p)
    no_rows = torch.zeros(0, dtype=torch.int64)
    assert torch.equal(target_probs(logits, None, off_k, off_p), general)
    assert torch.equal(target_probs(logits, None, no_rows, no_rows, no_rows, any_greedy=False), general)
    hot = torch.full((5,), 1.7)
    assert torch.equal(
        target_probs(logits, hot, off_k, off_p, no_rows, False), target_probs(logits, hot, off_k, off_p)
    )
