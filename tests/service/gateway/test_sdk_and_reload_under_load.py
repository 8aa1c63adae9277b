"""The trainer SDK against a real gateway, and reloads while rollouts are in flight."""

import itertools
import threading
import time

import pytest

from bebop.service.client import Prompt, RolloutClient, RolloutError, SamplingParams
from tests.procs import free_port, running

LONG = SamplingParams(max_new_tokens=100, ignore_eos=True)


@pytest.fixture(scope="module")
def gateway(quick_model):
    ports = [free_port(), free_port()]
    with (
        running(
            ["engine", "--model", str(quick_model), "--port", str(ports[0]), "--context-length", "256"],
            ports[0],
        ) as a,
        running(
            ["engine", "--model", str(quick_model), "--port", str(ports[1]), "--context-length", "256"],
            ports[1],
        ) as b,
    ):
        port = free_port()
        with running(
            [
                "serve",
                "--port",
                str(port),
                "--engine-url",
                a,
                "--engine-url",
                b,
                "--weights-root",
                str(quick_model),
            ],
            port,
            "/readyz",
        ) as url:
            yield url


def test_sdk_rollouts_streaming_and_errors(gateway):
    with RolloutClient(gateway) as client:
        prompts = [Prompt(input_ids=[5, 6], n=2), {"input_ids": [7], "n": 1}]
        results = client.rollouts(prompts, SamplingParams(max_new_tokens=6), seed=3, return_logprobs=True)
        assert len(results) == 3 and all(len(r.output_ids) == len(r.output_logprobs) for r in results)
        streamed = list(client.stream_rollouts(prompts, SamplingParams(max_new_tokens=6), seed=3))
        key = lambda r: (r.prompt_index, r.sample_index)  # noqa: E731
        assert [r.output_ids for r in sorted(streamed, key=key)] == [
            r.output_ids for r in sorted(results, key=key)
        ]
        with pytest.raises(RolloutError) as err:
            client.rollouts([Prompt(input_ids=[10**6])])
        assert err.value.status == 400
        assert set(client.weights()["engines"].values()) == {"default"}


def _validate_spans(result, versions):
    spans = result.weight_version_spans
    assert spans[0][0] == 0 and spans[-1][1] == len(result.output_ids), spans
    for (_, end, _), (start, _, _) in itertools.pairwise(spans):
        assert end == start, spans
    seen = [v for _, _, v in spans]
    assert set(seen) <= set(versions) and seen == sorted(seen, key=versions.index), spans


@pytest.mark.parametrize(("mode", "continue_aborted"), [("in_place", False), ("abort", True)])
def test_reload_under_load_tags_every_token_with_its_version(gateway, quick_model, mode, continue_aborted):
    with RolloutClient(gateway) as client:
        old = next(iter(client.weights()["engines"].values()))
        new = f"v-{mode}"
        out: dict = {}

        def roll():
            out["results"] = client.rollouts([Prompt(input_ids=[5, 6, 7], n=6)], LONG, seed=11)

        worker = threading.Thread(target=roll)
        worker.start()
        time.sleep(0.3)  # let the samples get going
        client.update_weights(str(quick_model), new, pause_mode=mode, continue_aborted=continue_aborted)
        worker.join(timeout=300)
        results = out["results"]
        assert len(results) == 6
        for r in results:
            assert len(r.output_ids) == 100 and r.finish_reason["type"] == "length", r.finish_reason
            _validate_spans(r, [old, new])
        assert any(v == new for r in results for _, _, v in r.weight_version_spans)
