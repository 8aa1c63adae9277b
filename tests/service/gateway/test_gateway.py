"""``bebop serve`` in front of real ``bebop engine`` processes on loopback."""

import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.procs import BEBOP, free_port, running, wait_ready

ROLLOUT = {
    "prompts": [{"input_ids": [5, 6, 7], "n": 3}, {"input_ids": [9, 10], "n": 2}],
    "sampling_params": {"max_new_tokens": 12, "ignore_eos": True},
    "seed": 100,
    "return_logprobs": True,
    "task": "unit",
}


def engine_args(model):
    """Checkpoints of these tests are written beside the model: the operator allows that root."""
    return ["engine", "--model", str(model), "--weights-root", str(model.parent)]


@pytest.fixture(scope="module")
def engines(quick_model):
    ports = [free_port(), free_port()]
    with (
        running([*engine_args(quick_model), "--port", str(ports[0])], ports[0]) as a,
        running([*engine_args(quick_model), "--port", str(ports[1])], ports[1]) as b,
    ):
        yield [a, b]


@pytest.fixture(scope="module")
def gateway(engines, quick_model):
    port = free_port()
    args = ["serve", "--port", str(port), "--engine-url", engines[0], "--engine-url", engines[1]]
    args += ["--weights-root", str(quick_model.parent)]
    with running(args, port, ready_path="/readyz") as url:
        yield url


def post(url, path, body, **kw):
    return httpx.post(url + path, json=body, timeout=120, **kw)


def test_rollouts_group_shape_and_determinism(gateway):
    first = post(gateway, "/v1/rollouts", ROLLOUT).json()["results"]
    assert sorted((r["prompt_index"], r["sample_index"]) for r in first) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
    ]
    for r in first:
        assert len(r["output_ids"]) == 12 and len(r["output_logprobs"]) == 12
        assert r["weight_version"] and r["finish_reason"]["type"] == "length"
        assert 0 <= r["spec"]["accept_rate"] <= 1 and len(r["spec"]["accept_per_position"]) == 3
    group = [r["output_ids"] for r in first if r["prompt_index"] == 0]
    assert len({tuple(g) for g in group}) == 3  # seed + k: different samples within a group
    again = post(gateway, "/v1/rollouts", ROLLOUT).json()["results"]
    key = lambda r: (r["prompt_index"], r["sample_index"])  # noqa: E731
    assert [r["output_ids"] for r in sorted(again, key=key)] == [
        r["output_ids"] for r in sorted(first, key=key)
    ]


def test_streaming_returns_one_line_per_sample(gateway):
    with httpx.stream("POST", gateway + "/v1/rollouts", json={**ROLLOUT, "stream": True}, timeout=120) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) == 5 and all("output_ids" in x for x in lines)


def test_sglang_generate_passes_through(gateway):
    r = post(
        gateway,
        "/generate",
        {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 4, "ignore_eos": True}},
    )
    assert r.status_code == 200 and len(r.json()["output_ids"]) == 4


def test_sglang_generate_streams_through(gateway):
    body = {
        "input_ids": [5, 6],
        "sampling_params": {"max_new_tokens": 6, "sampling_seed": 3, "ignore_eos": True},
    }
    whole = post(gateway, "/generate", body).json()
    with httpx.stream("POST", gateway + "/generate", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 3  # several chunks, not one buffered answer
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["output_ids"] == whole["output_ids"]  # same seed: the same tokens
    r = post(gateway, "/generate", {"input_ids": [10**9], "stream": True})
    assert r.status_code == 400 and "vocab" in r.text  # refused before streaming starts


@pytest.mark.parametrize(
    "body",
    [
        {"prompts": []},
        {"prompts": [{"input_ids": [1], "n": 0}]},
        {"prompts": [{"input_ids": []}]},
        {"prompts": [{"text": "a", "input_ids": [1]}]},
        {"prompts": [{"input_ids": [1]}], "sampling_params": {"temperature": -1}},
        {"prompts": [{"input_ids": [1]}], "sampling_params": {"top_p": 0}},
        {"prompts": [{"input_ids": [1]}], "sampling_params": {"top_p": 1.5}},
        {"prompts": [{"input_ids": [1]}], "sampling_params": {"max_new_tokens": 0}},
        {"prompts": [{"input_ids": [-4]}]},
        {"prompts": [{"input_ids": [1]}], "unknown": 1},
    ],
)
def test_bad_rollout_requests_are_422(gateway, body):
    r = post(gateway, "/v1/rollouts", body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"]


def test_engine_side_rejections_are_400_and_malformed_bodies_4xx(gateway):
    r = post(gateway, "/v1/rollouts", {"prompts": [{"input_ids": [10**6]}]})
    assert r.status_code == 400 and "vocabulary" in r.json()["detail"]
    assert httpx.post(gateway + "/v1/rollouts", content=b"{nope", timeout=10).status_code == 422
    assert httpx.post(gateway + "/generate", content=b"{nope", timeout=10).status_code == 400
    big = b"x" * (33 << 20)
    assert httpx.post(gateway + "/v1/rollouts", content=big, timeout=60).status_code == 413


def test_reload_all_engines_and_versions_follow(gateway, quick_model):
    r = post(gateway, "/v1/weights", {"model_path": str(quick_model), "version": "step-1"})
    assert r.status_code == 200, r.text
    assert set(httpx.get(gateway + "/v1/weights").json()["engines"].values()) == {"step-1"}
    results = post(gateway, "/v1/rollouts", ROLLOUT).json()["results"]
    assert {r["weight_version"] for r in results} == {"step-1"}
    assert post(gateway, "/v1/weights", {"model_path": "/etc", "version": "x"}).status_code == 403


def test_a_bad_checkpoint_is_rolled_back_everywhere(gateway, quick_model, tmp_path):
    bad = quick_model.parent / "broken-checkpoint"
    shutil.copytree(quick_model, bad, dirs_exist_ok=True)
    (bad / "model.safetensors").write_bytes(b"\0" * 64)
    before = httpx.get(gateway + "/v1/weights").json()["engines"]
    r = post(gateway, "/v1/weights", {"model_path": str(bad), "version": "broken"})
    assert r.status_code == 409 and len(r.json()["engines"]) == 2
    assert httpx.get(gateway + "/v1/weights").json()["engines"] == before
    assert post(gateway, "/v1/rollouts", ROLLOUT).status_code == 200


def test_engine_killed_mid_load_loses_no_request(quick_model):
    """Two engines; one is killed while rollouts are in flight. Every rollout still answers, with the
    same tokens a clean run gives (retries reuse the sample's seed)."""
    ports = [free_port(), free_port()]
    with running(["engine", "--model", str(quick_model), "--port", str(ports[0])], ports[0]) as a:
        victim = subprocess.Popen([BEBOP, "engine", "--model", str(quick_model), "--port", str(ports[1])])
        b = f"http://127.0.0.1:{ports[1]}"
        try:
            port = free_port()
            with running(
                ["serve", "--port", str(port), "--engine-url", a, "--engine-url", b], port, "/readyz"
            ) as gw:
                deadline = time.monotonic() + 60
                while httpx.get(gw + "/readyz").json().get("healthy_engines", 0) < 2:
                    assert time.monotonic() < deadline, "the second engine never became healthy"
                    time.sleep(0.2)
                body = {**ROLLOUT, "sampling_params": {"max_new_tokens": 40, "ignore_eos": True}}
                clean = post(gw, "/v1/rollouts", body).json()["results"]
                with ThreadPoolExecutor(8) as pool:
                    futures = [pool.submit(post, gw, "/v1/rollouts", body) for _ in range(8)]
                    os.kill(victim.pid, signal.SIGKILL)
                    answers = [f.result() for f in futures]
                key = lambda r: (r["prompt_index"], r["sample_index"])  # noqa: E731
                expected = [r["output_ids"] for r in sorted(clean, key=key)]
                for ans in answers:
                    assert ans.status_code == 200, ans.text
                    assert [r["output_ids"] for r in sorted(ans.json()["results"], key=key)] == expected
        finally:
            victim.kill()


def test_tokens_guard_the_api_and_non_loopback_needs_them(engines):
    env = {**os.environ, "BEBOP_API_TOKEN": "api-secret-123456", "BEBOP_ADMIN_TOKEN": "admin-secret-123456"}
    port = free_port()
    proc = subprocess.Popen([BEBOP, "serve", "--port", str(port), "--engine-url", engines[0]], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, timeout=60)
        small = {"prompts": [{"input_ids": [5]}], "sampling_params": {"max_new_tokens": 2}}
        assert post(url, "/v1/rollouts", small).status_code == 401
        api = {"Authorization": "Bearer api-secret-123456"}
        admin = {"Authorization": "Bearer admin-secret-123456"}
        assert post(url, "/v1/rollouts", small, headers=api).status_code == 200
        assert post(url, "/v1/pause", {"mode": "in_place"}, headers=api).status_code == 401
        assert post(url, "/v1/resume", {}, headers=admin).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    out = subprocess.run(
        [BEBOP, "serve", "--host", "0.0.0.0", "--engine-url", engines[0]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "only listens on loopback" in out.stderr


def test_metrics_export_acceptance_entropy_fit(gateway):
    post(gateway, "/v1/rollouts", ROLLOUT)
    text = httpx.get(gateway + "/metrics").text
    for name in (
        "bebop_accept_entropy_fit_slope",
        "bebop_spec_accept_rate_bucket",
        "bebop_engine_healthy",
        "bebop_target_entropy",
    ):
        assert name in text, name
    assert 'task="unit"' in text


def test_engines_discovered_from_dns_and_managed_at_run_time(engines):
    port = free_port()
    engine_port = engines[0].rsplit(":", 1)[1]
    with running(
        ["serve", "--port", str(port), "--engine-dns", f"localhost:{engine_port}"], port, "/readyz"
    ) as gw:
        listed = httpx.get(gw + "/v1/engines").json()["engines"]
        assert [e["url"] for e in listed] == [f"http://127.0.0.1:{engine_port}"]
        assert post(gw, "/v1/engines", {"url": engines[1]}).json()["healthy"] is True
        assert len(httpx.get(gw + "/v1/engines").json()["engines"]) == 2
        assert httpx.request("DELETE", gw + "/v1/engines", json={"url": engines[1]}).status_code == 200
        assert httpx.request("DELETE", gw + "/v1/engines", json={"url": engines[1]}).status_code == 404
        assert post(gw, "/v1/engines", {"url": "ftp://nope.example"}).status_code == 422
