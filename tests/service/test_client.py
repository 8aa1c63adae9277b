"""The SDK in-process: what each call sends and how answers become results or exceptions.

The shared request layer is tested directly; both transports are then driven through
``httpx.MockTransport`` so the sync and asyncio clients are held to the same requests and answers
without a gateway (the real round trip is in tests/service/gateway/test_sdk_and_reload_under_load.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pydantic
import pytest
import torch

from bebop.service.client import (
    AsyncRolloutClient,
    Prompt,
    RolloutClient,
    RolloutError,
    RolloutResult,
    SamplingParams,
    WeightPushError,
)
from bebop.service.client import _requests as calls

BASE = "http://gateway.test"
API_TOKEN, ADMIN_TOKEN = "api-secret", "admin-secret"
SAMPLE = {"prompt_index": 0, "sample_index": 1, "output_ids": [4, 5], "weight_version": "v1"}

Handler = Callable[[httpx.Request], httpx.Response]


def sync_client(handler: Handler) -> RolloutClient:
    client = RolloutClient(BASE + "/", api_token=API_TOKEN, admin_token=ADMIN_TOKEN)
    client.http.close()
    client.http = httpx.Client(base_url=client.http.base_url, transport=httpx.MockTransport(handler))
    return client


def async_client(handler: Handler) -> AsyncRolloutClient:
    client = AsyncRolloutClient(BASE + "/", api_token=API_TOKEN, admin_token=ADMIN_TOKEN)
    client.http = httpx.AsyncClient(base_url=client.http.base_url, transport=httpx.MockTransport(handler))
    return client


class Recorder:
    """A gateway stand-in: answers every request with one canned response and keeps the requests."""

    def __init__(self, status: int = 200, body: object = None, content: bytes | None = None):
        self.status, self.body, self.content = status, body, content
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.content is not None:
            return httpx.Response(self.status, content=self.content)
        return httpx.Response(self.status, json=self.body)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def last_json(self) -> object:
        return json.loads(self.last.content)


# --- the shared request layer --------------------------------------------------------------------


def test_rollouts_call_validates_converts_dicts_and_drops_unset_fields():
    call = calls.rollouts_call([{"input_ids": [1, 2], "n": 3}], None, 7, False, None, stream=False)
    assert (call.method, call.path, call.admin) == ("POST", "/v1/rollouts", False)
    assert call.body == {
        "prompts": [{"input_ids": [1, 2], "n": 3}],  # no "text": None, which the gateway forbids
        "sampling_params": SamplingParams().model_dump(),
        "seed": 7,
        "return_logprobs": False,
        "stream": False,
    }
    streamed = calls.rollouts_call([Prompt(text="1+1=")], SamplingParams(top_k=5), None, True, "arith", True)
    assert streamed.body["stream"] is True and streamed.body["task"] == "arith"
    assert streamed.body["sampling_params"]["top_k"] == 5 and "seed" not in streamed.body


@pytest.mark.parametrize(
    "prompt",
    [{"text": "a", "input_ids": [1]}, {}, {"text": "a", "extra": 1}, {"input_ids": []}],
    ids=["both-inputs", "no-input", "unknown-field", "empty-ids"],
)
def test_a_bad_prompt_raises_before_anything_is_sent(prompt):
    with pytest.raises(pydantic.ValidationError):
        calls.rollouts_call([prompt], None, None, False, None, False)


def test_weight_and_control_calls_use_the_admin_token_and_reads_the_api_token():
    update = calls.update_weights_call("/ckpt", "v2", "in_place", True)
    assert (update.method, update.path, update.admin) == ("POST", "/v1/weights", True)
    assert update.body == {
        "model_path": "/ckpt",
        "version": "v2",
        "pause_mode": "in_place",
        "continue_aborted": True,
    }
    read = calls.weights_call()
    assert (read.method, read.path, read.admin, read.body) == ("GET", "/v1/weights", False, None)
    assert calls.group_layout_call().admin and calls.group_layout_call().method == "GET"
    assert calls.pause_call("abort").body == {"mode": "abort"}
    assert calls.resume_call().body == {}  # an empty JSON object, not no body
    join = calls.join_group_call(3, "10.0.0.1", 29600, "g", "nccl")
    assert join.body == {
        "master_address": "10.0.0.1",
        "master_port": 29600,
        "world_size": 3,
        "group_name": "g",
        "backend": "nccl",
    }


def test_push_call_announces_tensors_in_broadcast_order():
    tensors = {"b.weight": torch.zeros(2, 3, dtype=torch.bfloat16), "a.bias": torch.zeros(5)}
    call = calls.push_weights_call(tensors, "grp", "step-3", "retract", False)
    assert (call.path, call.admin) == ("/v1/weights/distributed", True)
    assert call.body["names"] == ["b.weight", "a.bias"]
    assert call.body["shapes"] == [[2, 3], [5]]
    assert len(call.body["dtypes"]) == 2 and call.body["dtypes"][0] != call.body["dtypes"][1]
    announced = (call.body["group_name"], call.body["version"], call.body["pause_mode"])
    assert announced == ("grp", "step-3", "retract")


@pytest.mark.parametrize(
    ("response", "detail"),
    [
        (httpx.Response(409, json={"detail": {"e0": "rolled back"}}), {"detail": {"e0": "rolled back"}}),
        (httpx.Response(502, text="upstream died"), "upstream died"),
        (httpx.Response(401, content=b""), ""),
    ],
    ids=["json", "text", "empty"],
)
def test_check_turns_a_refusal_into_rollout_error_with_the_gateways_message(response, detail):
    with pytest.raises(RolloutError) as err:
        calls.check(response)
    assert err.value.status == response.status_code and err.value.detail == detail
    assert str(err.value) == f"HTTP {response.status_code}: {detail}"


def test_parse_reads_results_into_models():
    call = calls.rollouts_call([Prompt(input_ids=[1])], None, None, False, None, False)
    (result,) = call.parse(httpx.Response(200, json={"results": [SAMPLE]}))
    assert isinstance(result, RolloutResult)
    assert (result.sample_index, result.output_ids, result.weight_version) == (1, [4, 5], "v1")
    assert calls.weights_call().parse(httpx.Response(200, json={"engines": {}})) == {"engines": {}}
    with pytest.raises(pydantic.ValidationError):  # a result missing a field is not passed on untyped
        call.parse(httpx.Response(200, json={"results": [{"prompt_index": 0}]}))


def test_a_streamed_error_line_is_a_bad_gateway():
    assert calls.result_line(json.dumps(SAMPLE)).output_ids == [4, 5]
    with pytest.raises(RolloutError) as err:
        calls.result_line(json.dumps({"error": "engine 1 went away"}))
    assert (err.value.status, err.value.detail) == (502, "engine 1 went away")


def test_no_token_sends_no_authorization_header():
    assert calls.auth_headers(None) == {} and calls.auth_headers("") == {}
    assert calls.auth_headers("t") == {"Authorization": "Bearer t"}


# --- both transports over the same calls ---------------------------------------------------------


def run_sync(handler: Handler, method: str, *args, **kwargs):
    with sync_client(handler) as client:
        out = getattr(client, method)(*args, **kwargs)
        return list(out) if method == "stream_rollouts" else out


def run_async(handler: Handler, method: str, *args, **kwargs):
    async def go():
        client = async_client(handler)
        try:
            if method == "stream_rollouts":
                return [r async for r in client.stream_rollouts(*args, **kwargs)]
            return await getattr(client, method)(*args, **kwargs)
        finally:
            await client.aclose()

    return asyncio.run(go())


TRANSPORTS = pytest.mark.parametrize("run", [run_sync, run_async], ids=["sync", "async"])


@TRANSPORTS
def test_rollouts_sends_the_built_body_with_the_api_token(run):
    gateway = Recorder(body={"results": [SAMPLE, {**SAMPLE, "sample_index": 2}]})
    results = run(gateway, "rollouts", [{"text": "2+2="}], SamplingParams(max_new_tokens=4), seed=9)
    assert [r.sample_index for r in results] == [1, 2] and all(isinstance(r, RolloutResult) for r in results)
    assert gateway.last.method == "POST" and gateway.last.url == f"{BASE}/v1/rollouts"
    assert gateway.last.headers["authorization"] == f"Bearer {API_TOKEN}"
    expected = calls.rollouts_call(
        [{"text": "2+2="}], SamplingParams(max_new_tokens=4), 9, False, None, False
    )
    assert gateway.last_json() == expected.body


@TRANSPORTS
def test_stream_rollouts_skips_blank_lines_and_raises_on_an_error_line(run):
    lines = [json.dumps(SAMPLE), "", json.dumps({**SAMPLE, "sample_index": 0})]
    gateway = Recorder(content="\n".join([*lines, ""]).encode())
    assert [r.sample_index for r in run(gateway, "stream_rollouts", [{"input_ids": [3]}])] == [1, 0]
    assert gateway.last_json()["stream"] is True

    failing = Recorder(content=(json.dumps(SAMPLE) + "\n" + json.dumps({"error": "boom"}) + "\n").encode())
    with pytest.raises(RolloutError) as err:
        run(failing, "stream_rollouts", [{"input_ids": [3]}])
    assert (err.value.status, err.value.detail) == (502, "boom")


@TRANSPORTS
def test_a_refused_stream_raises_with_the_body_read(run):
    gateway = Recorder(status=429, body={"detail": "overloaded"})
    with pytest.raises(RolloutError) as err:
        run(gateway, "stream_rollouts", [{"input_ids": [3]}])
    assert (err.value.status, err.value.detail) == (429, {"detail": "overloaded"})


@TRANSPORTS
@pytest.mark.parametrize(
    ("method", "args", "http_method", "path", "body"),
    [
        (
            "update_weights",
            ("/ckpt/7", "step-7"),
            "POST",
            "/v1/weights",
            {
                "model_path": "/ckpt/7",
                "version": "step-7",
                "pause_mode": "retract",
                "continue_aborted": False,
            },
        ),
        ("weights", (), "GET", "/v1/weights", None),
    ],
)
def test_weight_calls_reach_the_right_route_with_the_right_token(run, method, args, http_method, path, body):
    gateway = Recorder(body={"ok": True})
    assert run(gateway, method, *args) == {"ok": True}
    assert (gateway.last.method, gateway.last.url.path) == (http_method, path)
    token = ADMIN_TOKEN if http_method == "POST" else API_TOKEN
    assert gateway.last.headers["authorization"] == f"Bearer {token}"
    assert (gateway.last_json() if gateway.last.content else None) == body


@TRANSPORTS
def test_a_refused_call_raises_rollout_error(run):
    gateway = Recorder(status=409, body={"detail": "rolled back"})
    with pytest.raises(RolloutError) as err:
        run(gateway, "update_weights", "/ckpt", "v9")
    assert (err.value.status, err.value.detail) == (409, {"detail": "rolled back"})


def test_sync_pause_and_resume_send_admin_posts():
    gateway = Recorder(body={"paused": True})
    with sync_client(gateway) as client:
        client.pause("abort")
        assert (gateway.last.url.path, gateway.last_json()) == ("/v1/pause", {"mode": "abort"})
        client.resume()
        assert (gateway.last.url.path, gateway.last_json()) == ("/v1/resume", {})
    assert {r.headers["authorization"] for r in gateway.requests} == {f"Bearer {ADMIN_TOKEN}"}


def test_async_pause_resume_and_context_manager_match_the_sync_client():
    gateway = Recorder(body={"paused": True})

    async def main():
        async with async_client(gateway) as client:
            await client.pause("abort")
            assert (gateway.last.url.path, gateway.last_json()) == ("/v1/pause", {"mode": "abort"})
            await client.resume()
            assert (gateway.last.url.path, gateway.last_json()) == ("/v1/resume", {})
            await client.close_weights_group()  # no group joined: nothing to leave
        assert client.http.is_closed

    asyncio.run(main())
    assert {r.headers["authorization"] for r in gateway.requests} == {f"Bearer {ADMIN_TOKEN}"}


def test_push_without_a_group_raises_before_sending():
    gateway = Recorder(body={})
    with sync_client(gateway) as client, pytest.raises(WeightPushError):
        client.push_weights({"w": torch.zeros(1)}, "v1")
    assert gateway.requests == []
    with pytest.raises(WeightPushError):
        run_async(gateway, "push_weights", {"w": torch.zeros(1)}, "v1")
    assert gateway.requests == []


def test_async_pusher_shares_the_url_timeout_and_admin_token():
    async def go() -> RolloutClient:
        client = AsyncRolloutClient(BASE + "/", admin_token=ADMIN_TOKEN, timeout_s=12.0)
        try:
            return client._pusher()
        finally:
            await client.aclose()

    pusher = asyncio.run(go())
    assert str(pusher.http.base_url).rstrip("/") == BASE and pusher.http.timeout.read == 12.0
    assert pusher.admin == {"Authorization": f"Bearer {ADMIN_TOKEN}"} and pusher.api == {}
