"""The plugin inside the real SGLang 0.5.23: loaded through its entry point by SGLang's own loader,
every binding of the chain kernel rebound (in a spawned process too), and the patched kernel,
called with inputs built as ``eagle_sample`` builds them, checked against SGLang's kernel and the
target law. The SGLang side runs in sglang_probe.py (conftest.py starts it once per session).
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch

from tests.stats import accepted_count_law, assert_counts_follow

pytestmark = pytest.mark.sglang

FORCED_CASES = ["random", "p_equals_q", "one_hot_target", "zero_q_draft", "block_verification"]


def test_entry_point_is_declared_for_sglang():
    points = importlib.metadata.entry_points(group="sglang.srt.plugins")
    assert [(p.name, p.value) for p in points if p.name == "bebop"] == [
        ("bebop", "bebop.service.sglang.plugin:load")
    ]


def test_every_binding_reaches_bebop_after_sglang_loads_plugins(probe_result):
    assert probe_result["sglang_plugins_env"] == "bebop"
    assert probe_result["bindings"], "no kernel bindings found"
    assert all(probe_result["bindings"].values()), probe_result["bindings"]


def test_spawned_process_loads_the_plugin_too(probe_result):
    # The scheduler is a spawned child (sglang/srt/managers/scheduler.py:6323 calls load_plugins()).
    assert probe_result["spawned_bindings"] == probe_result["bindings"]


@pytest.mark.parametrize("case", FORCED_CASES)
def test_patched_kernel_matches_sglang_on_the_same_coins(probe_result, case):
    # Same uniforms, same accept rule (u * q < p, q(y) > 0): the same accept decisions; the final
    # draw is an integer CDF against SGLang's float one, equal away from ulp-wide boundaries.
    verdict = probe_result["verify"][case]
    assert verdict["ours"] == verdict["sglang"]


def test_patched_outputs_follow_sglang_layout(probe_result):
    verdict = probe_result["verify"]["random"]
    ours = {k: torch.tensor(v) for k, v in verdict["ours"].items()}
    retrive_index = torch.tensor(verdict["retrive_index"])
    candidates = torch.tensor(verdict["candidates"])
    target = torch.tensor(verdict["target_probs"])
    bs, N = candidates.shape
    n = ours["accept_token_num"].long()
    assert bool(((n >= 0) & (n <= N - 1)).all())
    emitted = torch.arange(N) <= n[:, None]
    assert torch.equal(ours["accept_index"].long(), torch.where(emitted, retrive_index, -1))
    predicts = ours["predicts"].view(bs, N).long()
    accepted = torch.arange(N) < n[:, None]
    assert torch.equal(torch.where(accepted, predicts, -1), torch.where(accepted, candidates.roll(-1, 1), -1))
    assert bool((predicts[emitted.logical_not()] == 0).all()), "slots past the emitted ones were written"
    final = predicts.gather(1, n[:, None]).squeeze(1)
    assert bool((target[torch.arange(bs), n, final] > 0).all()), "a final token of probability 0"
    assert n.sum() > 0 and (n < N - 1).any(), "the random case should mix accepts and rejects"


def test_forced_outcomes(probe_result):
    verify = probe_result["verify"]
    N = len(verify["p_equals_q"]["candidates"][0])
    assert set(verify["p_equals_q"]["ours"]["accept_token_num"]) == {N - 1}
    one_hot = verify["one_hot_target"]["ours"]
    assert set(one_hot["accept_token_num"]) == {0}
    assert set(np.array(one_hot["predicts"]).reshape(-1, N)[:, 0].tolist()) == {3}
    assert set(verify["zero_q_draft"]["ours"]["accept_token_num"]) == {0}


def test_triton_kernel_and_torch_twin_give_the_same_outputs(probe_result):
    assert probe_result["verify"]["twin"] == probe_result["verify"]["random"]["ours"]


def test_entropy_of_the_sampling_law_comes_with_the_verify(probe_result):
    target = torch.tensor(probe_result["verify"]["random"]["target_probs"])
    expected = -torch.special.xlogy(target, target).sum(-1)
    assert probe_result["verify"]["entropy_from_kernel"] is not None
    torch.testing.assert_close(torch.tensor(probe_result["verify"]["entropy_from_kernel"]), expected)


def test_patched_kernel_follows_the_target_law(probe_result):
    stats = probe_result["statistics"]
    p, q = torch.tensor(stats["p"]), torch.tensor(stats["q"])
    assert p[0, 5] == 0.0
    assert_counts_follow(np.array(stats["first_token_counts"]), p[0].numpy(), "first emitted token")
    rates = torch.minimum(p[:-1], q).sum(-1)  # a_i = sum_v min(p_i, q_i)
    assert_counts_follow(np.array(stats["accept_counts"]), accepted_count_law(rates), "accepted drafts")
