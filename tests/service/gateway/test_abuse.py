"""``bebop serve`` against careless and hostile clients (issue 10): bad input is a 4xx that harms
no one and never opens the circuit breaker; cancelled and failed work is released (counters and
engine queues back to zero); admitted work is queued, not bounced; only token holders get in.

One small engine (2 KV slots, a queue of 4) behind one gateway serves most of the module, so that
admission and queueing are easy to push on.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.procs import BEBOP, free_port, running, wait_ready

API, ADMIN = "api-secret-0123456789", "admin-secret-0123456789"


@pytest.fixture(scope="module")
def engine(quick_model):
    port = free_port()
    args = ["engine", "--model", str(quick_model), "--port", str(port), "--max-running", "2"]
    with running([*args, "--max-queue", "4", "--weights-root", str(quick_model)], port) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(engine, quick_model):
    port = free_port()
    args = ["serve", "--port", str(port), "--engine-url", engine, "--weights-root", str(quick_model)]
    with running(args, port, ready_path="/readyz") as url:
        yield url


def post(url, path, body=None, content=None, **kw):
    kw.setdefault("timeout", 120)
    if content is not None:
        return httpx.post(url + path, content=content, **kw)
    return httpx.post(url + path, json=body, **kw)


def settled(gateway, engine, timeout=15.0):
    """Everything released: no sample in flight at the gateway, nothing outstanding per engine,
    nothing running or queued in the engine, and the engine still in rotation."""
    deadline = time.monotonic() + timeout
    while True:
        (state,) = httpx.get(gateway + "/v1/engines").json()["engines"]
        info = httpx.get(engine + "/server_info").json()
        inflight = re.search(r"^bebop_rollouts_inflight (\S+)$", httpx.get(gateway + "/metrics").text, re.M)
        done = (
            state["outstanding"] == 0
            and info["running_requests"] == 0
            and info["queued_requests"] == 0
            and float(inflight.group(1)) == 0
        )
        if done:
            assert state["healthy"], state
            return
        assert time.monotonic() < deadline, (state, info, inflight.group(0))
        time.sleep(0.05)


CLIENT_ERRORS = [
    b'{"input_ids": [5, 6], "sampling_params": {"top_k": 9223372036854775808}}',
    b'{"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 1e309}}',
    b'{"input_ids": [5, 6], "sampling_params": {"top_k": Infinity}}',
    b'{"input_ids": [5, 6], "sampling_params": {"stop_token_ids": [Infinity]}}',
    b'{"input_ids": [5, 6], "sampling_params": {"sampling_seed": Infinity}}',
    b'{"input_ids": [5, 6], "sampling_params": {"temperature": NaN}}',
    b'{"text": "\\ud800"}',
    b'{"input_ids": [5], "stream": true, "sampling_params": {"top_k": -Infinity}}',
    b"[" * 100_000 + b"]" * 100_000,
]


def test_client_errors_are_4xx_and_never_open_the_breaker(gateway, engine):
    for _ in range(2):  # well past the three failures that open the circuit
        for raw in CLIENT_ERRORS:
            r = post(gateway, "/generate", content=raw)
            assert 400 <= r.status_code < 500, (raw[:80], r.status_code, r.text[:300])
    rollouts = [
        {"prompts": [{"input_ids": [5]}], "sampling_params": {"top_k": 2**63}},
        {"prompts": [{"input_ids": [2**63]}]},
        {"prompts": [{"text": "\ud800"}]},
        {"prompts": [{"input_ids": [5]}], "task": "\udfff"},
    ]
    for body in rollouts:
        raw = json.dumps(body).encode()  # json.dumps escapes the surrogate: valid JSON, invalid text
        r = post(gateway, "/v1/rollouts", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (body, r.status_code, r.text[:300])
    nested = b'{"prompts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = post(gateway, "/v1/rollouts", content=nested, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    ok = post(
        gateway,
        "/v1/rollouts",
        {"prompts": [{"input_ids": [5, 6]}], "sampling_params": {"max_new_tokens": 3}},
    )
    assert ok.status_code == 200, ok.text
    settled(gateway, engine)


def test_a_chunked_body_over_the_cap_is_413(gateway):
    r = httpx.post(gateway + "/v1/rollouts", content=(b" " * (1 << 20) for _ in range(33)), timeout=60)
    assert r.status_code == 413


# Greedy: the quick model accepts about one draft per step then, so 500 tokens take 500 steps
# (seconds), while at T = 1 its long accepted chains finish 300 tokens in well under a second.
LONG = {"max_new_tokens": 500, "temperature": 0, "ignore_eos": True}


def test_a_closed_rollout_stream_releases_everything(gateway, engine):
    body = {"prompts": [{"input_ids": [5, 6], "n": 3}], "sampling_params": LONG, "stream": True}
    with httpx.stream("POST", gateway + "/v1/rollouts", json=body, timeout=60) as r:
        assert r.status_code == 200
        deadline = time.monotonic() + 30
        while httpx.get(engine + "/server_info").json()["running_requests"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    settled(gateway, engine)


@pytest.mark.parametrize("path", ["/v1/rollouts", "/generate"])
def test_a_client_that_goes_away_releases_everything(gateway, engine, path):
    if path == "/generate":
        body = {"input_ids": [5, 6], "sampling_params": LONG}
    else:
        body = {"prompts": [{"input_ids": [5, 6], "n": 3}], "sampling_params": LONG}
    with pytest.raises(httpx.ReadTimeout):
        post(gateway, path, body, timeout=0.5)
    settled(gateway, engine)


def test_a_rollout_that_fails_part_way_cancels_its_siblings(gateway, engine):
    body = {
        "prompts": [{"input_ids": [5, 6], "n": 3}, {"input_ids": [10**6]}],  # the last one: 400
        "sampling_params": LONG,
    }
    r = post(gateway, "/v1/rollouts", body)
    assert r.status_code == 400 and "vocabulary" in r.json()["detail"]
    settled(gateway, engine)


def test_admitted_work_waits_for_a_full_engine_queue_instead_of_503(gateway, engine):
    """n = 20 against 2 KV slots and a queue of 4: the gateway queues what it admitted."""
    body = {"prompts": [{"input_ids": [5, 6], "n": 20}], "sampling_params": {"max_new_tokens": 2}, "seed": 1}
    r = post(gateway, "/v1/rollouts", body)
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 20
    settled(gateway, engine)


def test_weight_roots_come_from_the_operator_only(gateway, quick_model):
    # the engine reports quick_model as its model_path: its parent must not become a root
    for path in (quick_model.parent, quick_model.parent / "elsewhere", Path("/etc")):
        r = post(gateway, "/v1/weights", {"model_path": str(path), "version": "x"})
        assert r.status_code == 403, (path, r.text)
    assert post(gateway, "/v1/engines", {"url": "http://127.0.0.1:1"}).status_code == 200
    try:
        r = post(gateway, "/v1/weights", {"model_path": "/", "version": "x"})
        assert r.status_code == 403
    finally:
        httpx.request("DELETE", gateway + "/v1/engines", json={"url": "http://127.0.0.1:1"})


def test_abort_stops_samples_after_a_reload_that_continued_aborted_ones(gateway, engine, quick_model):
    reload = {"model_path": str(quick_model), "version": "v-cont", "continue_aborted": True}
    assert post(gateway, "/v1/weights", reload).status_code == 200
    body = {"prompts": [{"input_ids": [5, 6]}], "sampling_params": {**LONG, "max_new_tokens": 400}}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, gateway, "/v1/rollouts", body)
        deadline = time.monotonic() + 30
        while httpx.get(engine + "/server_info").json()["running_requests"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert post(gateway, "/v1/abort", {}).status_code == 200
        (result,) = pending.result().json()["results"]
    assert result["finish_reason"]["type"] == "abort", result["finish_reason"]
    assert len(result["output_ids"]) < 400
    settled(gateway, engine)


def test_metric_labels_are_bounded(gateway):
    body = {"prompts": [{"input_ids": [5]}], "sampling_params": {"max_new_tokens": 1}}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: post(gateway, "/v1/rollouts", {**body, "task": f"task-{i}"}), range(40)))
    tasks = set(re.findall(r'task="([^"]*)"', httpx.get(gateway + "/metrics").text))
    assert len(tasks) <= 18 and "other" in tasks, tasks  # 16 names, "other", "none"


def test_auth_with_one_token_closes_every_route_but_health(engine):
    env = {**os.environ, "BEBOP_API_TOKEN": API}
    env.pop("BEBOP_ADMIN_TOKEN", None)
    port = free_port()
    proc = subprocess.Popen([BEBOP, "serve", "--port", str(port), "--engine-url", engine], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, timeout=60)
        bearer = {"Authorization": f"Bearer {API}"}
        for method, path, body in [
            ("GET", "/v1/engines", None),
            ("POST", "/v1/pause", {"mode": "in_place"}),
            ("POST", "/v1/resume", {}),
            ("POST", "/v1/abort", {}),
            ("GET", "/metrics", None),
            ("POST", "/v1/rollouts", {"prompts": [{"input_ids": [5]}]}),
        ]:
            for headers in ({}, {"Authorization": API}, {"Authorization": "Bearer wrong-token-0123"}):
                r = httpx.request(method, url + path, json=body, headers=headers, timeout=30)
                assert r.status_code == 401, (path, headers, r.status_code)
        assert httpx.get(url + "/v1/engines", headers=bearer).status_code == 200
        assert httpx.get(url + "/metrics", headers=bearer).status_code == 200
        assert (
            httpx.get(url + "/healthz").status_code == 200 and httpx.get(url + "/readyz").status_code == 200
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def children(pid):
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out |= {int(c) for c in text}
    return out


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_embedded_engines_die_with_a_killed_gateway_even_when_stuck():
    port = free_port()
    proc = subprocess.Popen([BEBOP, "serve", "--port", str(port), "--engines", "1"])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, timeout=180)
        (child,) = children(proc.pid)
        assert post(url, "/v1/pause", {"mode": "in_place"}).status_code == 200

        def hold() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the gateway is killed under it, as meant
                httpx.post(url + "/generate", json={"input_ids": [5]}, timeout=30)

        held = threading.Thread(target=hold, daemon=True)
        held.start()  # a request the paused engine holds: a polite shutdown would wait for it
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while alive(child):
            assert time.monotonic() < deadline, "the engine outlived its gateway"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_the_gateway_logs_how_an_embedded_engine_died(tmp_path):
    """A SIGKILLed engine (the OOM killer, say) writes nothing itself: its parent must say it."""
    port = free_port()
    log = tmp_path / "gateway.log"
    with log.open("w") as f:
        proc = subprocess.Popen([BEBOP, "serve", "--port", str(port), "--engines", "1"], stdout=f, stderr=f)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, timeout=180)
        (child,) = children(proc.pid)
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while "was killed by SIGKILL" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        assert f"(pid {child})" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert log.read_text().count("while the gateway was serving") == 1  # a normal stop is not reported
