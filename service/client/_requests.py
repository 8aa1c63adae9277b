"""What the SDK sends and how it reads the answers, shared by the sync and the asyncio transport.

Every SDK method that talks to the gateway is one ``Call``: the HTTP method and path, the JSON
body, which of the two tokens authorises it, and how the checked JSON becomes the return value.
The transports (``sync.py`` over ``httpx.Client``, ``aio.py`` over ``httpx.AsyncClient``) only send
calls and hand the response back to ``Call.parse``. Nothing here does I/O, so a request the gateway
would misread or an answer the SDK would mistype is caught by tests without a server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import torch

from ..gateway.schemas import (
    PromptIn as Prompt,
)
from ..gateway.schemas import (
    RolloutRequest,
    RolloutResult,
)
from ..gateway.schemas import (
    SamplingParamsIn as SamplingParams,
)
from ..weight_push import tensor_manifest

# The gateway streams a failed sample as an `{"error": ...}` line after the 200 header went out; it
# is an upstream (engine) failure, so the SDK reports it as a bad gateway.
STREAM_ERROR_STATUS = 502

ROLLOUTS_PATH = "/v1/rollouts"
WEIGHTS_PATH = "/v1/weights"
WEIGHTS_GROUP_PATH = "/v1/weights/group"
WEIGHTS_PUSH_PATH = "/v1/weights/distributed"
PAUSE_PATH = "/v1/pause"
RESUME_PATH = "/v1/resume"


class RolloutError(RuntimeError):
    """The gateway refused a call: ``status`` is the HTTP status, ``detail`` its JSON (or text) body."""

    def __init__(self, status: int, detail: Any):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def _as_is(data: Any) -> Any:
    return data


@dataclass(frozen=True)
class Call:
    """One request of the SDK and the reading of its answer; a transport sends it as it stands."""

    method: str
    path: str
    admin: bool  # the admin token authorises it (weights, pause); otherwise the API token does
    body: dict[str, Any] | None = None  # JSON body; None sends none (GET)
    result: Callable[[Any], Any] = _as_is  # checked JSON -> the method's return value

    def parse(self, response: httpx.Response) -> Any:
        """The return value for a read response, or RolloutError if the gateway refused."""
        return self.result(check(response))


def gateway_url(url: str) -> str:
    """The base URL as given, with or without trailing slashes (httpx joins the paths onto it)."""
    return url.rstrip("/")


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def refused(response: httpx.Response) -> bool:
    return response.status_code >= 400


def check(response: httpx.Response) -> Any:
    """The JSON of a successful (read) response; RolloutError with the gateway's message otherwise."""
    if refused(response):
        try:
            detail = response.json()
        except ValueError:
            detail = response.text
        raise RolloutError(response.status_code, detail)
    return response.json()


def rollout_results(data: Mapping[str, Any]) -> list[RolloutResult]:
    return [RolloutResult(**r) for r in data["results"]]


def result_line(line: str) -> RolloutResult:
    """One NDJSON line of a streamed rollout: a sample, or RolloutError for a sample that failed."""
    data = json.loads(line)
    if "error" in data:
        raise RolloutError(STREAM_ERROR_STATUS, data["error"])
    return RolloutResult(**data)


def rollouts_call(
    prompts: list[Prompt | dict],
    sampling_params: SamplingParams | None,
    seed: int | None,
    return_logprobs: bool,
    task: str | None,
    stream: bool,
) -> Call:
    """POST /v1/rollouts. Validated here, so a bad prompt raises before anything is sent.

    A streamed answer is NDJSON: the transport reads it line by line with ``result_line``.
    """
    req = RolloutRequest(
        prompts=[p if isinstance(p, Prompt) else Prompt(**p) for p in prompts],
        sampling_params=sampling_params or SamplingParams(),
        seed=seed,
        return_logprobs=return_logprobs,
        task=task,
        stream=stream,
    )
    body = req.model_dump(exclude_none=True)
    return Call("POST", ROLLOUTS_PATH, admin=False, body=body, result=rollout_results)


def update_weights_call(model_path: str, version: str, pause_mode: str, continue_aborted: bool) -> Call:
    body = {
        "model_path": model_path,
        "version": version,
        "pause_mode": pause_mode,
        "continue_aborted": continue_aborted,
    }
    return Call("POST", WEIGHTS_PATH, admin=True, body=body)


def weights_call() -> Call:
    return Call("GET", WEIGHTS_PATH, admin=False)


def group_layout_call() -> Call:
    """GET the weight group's layout: world_size and each engine's rank offset."""
    return Call("GET", WEIGHTS_GROUP_PATH, admin=True)


def join_group_call(
    world_size: int, master_address: str, master_port: int, group_name: str, backend: str
) -> Call:
    """POST that makes every engine join the group whose rank 0 is this trainer."""
    body = {
        "master_address": master_address,
        "master_port": master_port,
        "world_size": world_size,
        "group_name": group_name,
        "backend": backend,
    }
    return Call("POST", WEIGHTS_GROUP_PATH, admin=True, body=body)


def leave_group_call() -> Call:
    """DELETE: every engine leaves the weight group (a refused push leaves the group out of step)."""
    return Call("DELETE", WEIGHTS_GROUP_PATH, admin=True)


def push_weights_call(
    named_tensors: dict[str, torch.Tensor],
    group_name: str,
    version: str,
    pause_mode: str,
    continue_aborted: bool,
) -> Call:
    """POST announcing a broadcast: names, dtypes and shapes in broadcast order, then the version."""
    body = {
        **tensor_manifest(named_tensors, group_name),
        "version": version,
        "pause_mode": pause_mode,
        "continue_aborted": continue_aborted,
    }
    return Call("POST", WEIGHTS_PUSH_PATH, admin=True, body=body)


def pause_call(mode: str) -> Call:
    return Call("POST", PAUSE_PATH, admin=True, body={"mode": mode})


def resume_call() -> Call:
    return Call("POST", RESUME_PATH, admin=True, body={})
