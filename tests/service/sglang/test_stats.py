"""Per-request acceptance and entropy: meta_info fields and bebop_engine_* series from inside SGLang.

``RequestStats`` is checked here directly; the plumbing through SGLang's real Scheduler,
SchedulerOutputStreamer and TokenizerManager runs in sglang_probe.py (``statistics_plumbing``).
"""

from __future__ import annotations

import math

import pytest

from bebop.service.sglang.stats import RequestStats


def test_request_stats_count_positions_reached_and_accepted():
    stats = RequestStats()
    stats.add(0, [1.0, 2.0, 3.0, 4.0])  # rejected at draft 1: reached 1 position, emitted 1 token
    stats.add(3, [0.5, 0.5, 0.5, 0.5])  # all 3 accepted plus the bonus token
    stats.add(1, [0.1, 0.2, 0.3, 0.4])  # draft 1 accepted, draft 2 rejected
    assert stats.reached == [3, 2, 1]
    assert stats.accepted == [2, 1, 1]
    assert stats.accept_per_position() == [2 / 3, 1 / 2, 1.0]
    assert stats.entropies == [1.0, 0.5, 0.5, 0.5, 0.5, 0.1, 0.2]
    assert math.isclose(stats.entropy_mean(), sum(stats.entropies) / 7)


def test_request_stats_without_entropy_reads():
    stats = RequestStats()
    stats.add(1, [float("nan")] * 3)
    assert stats.entropy_mean() is None and stats.accept_per_position() == [1.0, 0.0]


def expected_for(history: list[tuple[int, list[float]]]) -> RequestStats:
    stats = RequestStats()
    for n, row in history:
        stats.add(n, row)
    return stats


@pytest.mark.sglang
def test_hooks_reach_sglangs_verify_streamer_and_tokenizer(probe_result):
    plumbing = probe_result["plumbing"]
    assert plumbing["eagle_sample_hooked"] == [True, True]  # eagle_utils and eagle_worker_common
    assert plumbing["streamer_is_sglangs_subclass"]


@pytest.mark.sglang
def test_meta_info_carries_acceptance_per_position_and_entropy(probe_result):
    steps = probe_result["plumbing"]["steps"]
    for i in range(2):  # request "a" asked for per-token entropy, "b" did not
        history = []
        for step in steps:
            history.append((step["accept_token_num"][i], step["entropy"][i]))
            expected = expected_for(history)
            meta = step["meta"][i]
            assert meta["spec_accept_per_position"] == expected.accept_per_position()
            assert math.isclose(meta["entropy_mean"], expected.entropy_mean(), rel_tol=1e-5)
            if i == 0:
                assert meta["output_token_entropy"] == pytest.approx(expected.entropies, rel=1e-5)
            else:
                assert "output_token_entropy" not in meta


@pytest.mark.sglang
def test_prometheus_series_from_the_scheduler_process(probe_result):
    plumbing = probe_result["plumbing"]
    samples = dict(line.rsplit(" ", 1) for line in plumbing["metrics"])
    per_request = [
        expected_for([(s["accept_token_num"][i], s["entropy"][i]) for s in plumbing["steps"]])
        for i in range(2)
    ]
    for k in range(3):
        reached = sum(r.reached[k] for r in per_request)
        accepted = sum(r.accepted[k] for r in per_request)
        assert float(samples.get(f'bebop_engine_drafts_proposed_total{{position="{k + 1}"}}', 0)) == reached
        assert float(samples.get(f'bebop_engine_drafts_accepted_total{{position="{k + 1}"}}', 0)) == accepted
    assert float(samples["bebop_engine_accept_length_count"]) == 2 * len(plumbing["steps"])
