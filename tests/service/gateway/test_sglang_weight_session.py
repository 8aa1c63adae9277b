"""The gateway's distributed push speaks SGLang 0.5.23's weight-update session to stock engines,
and still updates engines from before 0.5.23 that have no session routes.

The engines here are FAKE SGLang servers (``fake_sglang.py``): a real SGLang server cannot run on
these CPU machines. The fake enforces 0.5.23's rules (400 for an update outside a session)."""

import contextlib
import subprocess
import sys
import time

import httpx
import pytest

from tests.procs import free_port, running

PUSH = {"names": ["w"], "dtypes": ["float32"], "shapes": [[1]], "version": "v2", "pause_mode": "in_place"}


@contextlib.contextmanager
def fake_engine(old: bool):
    port = free_port()
    args = [sys.executable, "-m", "tests.service.gateway.fake_sglang", str(port), *(["--old"] if old else [])]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def stacks():
    port = free_port()
    with fake_engine(False) as new, fake_engine(True) as old:
        args = ["serve", "--port", str(port), "--engine-url", new, "--engine-url", old]
        with running(args, port, ready_path="/readyz") as gateway:
            yield gateway, new, old


def test_the_fake_enforces_sglang_0_5_23s_session(stacks):
    _, new, _ = stacks
    body = {"names": ["w"], "dtypes": ["float32"], "shapes": [[1]]}
    r = httpx.post(new + "/update_weights_from_distributed", json=body)
    assert r.status_code == 400 and "begin_weight_update" in r.json()["message"]
    assert httpx.post(new + "/end_weight_update", json={}).status_code == 400


def test_the_push_wraps_each_update_in_a_session(stacks):
    gateway, new, old = stacks
    r = httpx.post(
        gateway + "/v1/weights/group",
        json={"master_address": "127.0.0.1", "master_port": 29511, "world_size": 3},
    )
    assert r.status_code == 200, r.text
    r = httpx.post(gateway + "/v1/weights/distributed", json=PUSH, timeout=60)
    assert r.status_code == 200, r.text
    calls = httpx.get(new + "/calls").json()
    at = len(calls) - 1 - calls[::-1].index("/update_weights_from_distributed")  # the gateway's
    assert calls[at - 1] == "/begin_weight_update" and calls[at + 1] == "/end_weight_update", calls
    assert "/begin_weight_update" in httpx.get(old + "/calls").json()  # tried, 404, updated without one
    for url in (new, old):
        assert httpx.get(url + "/model_info").json()["weight_version"] == "v2"
    # a session left open (an interrupted update) is closed and opened again
    assert httpx.post(new + "/begin_weight_update", json={"selector": "all"}).status_code == 200
    r = httpx.post(gateway + "/v1/weights/distributed", json={**PUSH, "version": "v3"}, timeout=60)
    assert r.status_code == 200, r.text
    assert httpx.get(new + "/model_info").json()["weight_version"] == "v3"


def test_a_stock_engine_that_refuses_is_told_to_leave_the_group(stacks):
    """SGLang may refuse before receiving while the trainer and the other members are inside the
    broadcast; leaving closes its connections, so they fail at once instead of at the group timeout."""
    gateway, new, old = stacks
    r = httpx.post(
        gateway + "/v1/weights/group",
        json={"master_address": "127.0.0.1", "master_port": 29512, "world_size": 3},
    )
    assert r.status_code == 200, r.text
    body = {**PUSH, "names": ["refuse-me"], "version": "v-refused"}
    r = httpx.post(gateway + "/v1/weights/distributed", json=body, timeout=60)
    assert r.status_code == 409 and "fake refusal" in r.text, r.text
    for url in (new, old):
        calls = httpx.get(url + "/calls").json()
        at = len(calls) - 1 - calls[::-1].index("/update_weights_from_distributed")
        assert "/destroy_weights_update_group" in calls[at:], (url, calls[at:])
        assert httpx.get(url + "/model_info").json()["weight_version"] != "v-refused"
    # a member left, so the group is gone: the next push says to create it again
    assert httpx.get(gateway + "/v1/weights/group").json()["group_name"] is None
    r = httpx.post(gateway + "/v1/weights/distributed", json=PUSH, timeout=60)
    assert r.status_code == 409 and "no weight update group" in r.text, r.text
