"""Trainer SDK: ``RolloutClient`` (sync) and ``AsyncRolloutClient`` over the gateway's HTTP API.

    client = RolloutClient("http://127.0.0.1:8000", api_token=..., admin_token=...)
    results = client.rollouts([Prompt(text="12+35=", n=8)], SamplingParams(max_new_tokens=64), seed=1)
    client.update_weights("/ckpt/step-10", version="step-10", pause_mode="retract")

Results are the gateway's pydantic models (``RolloutResult``), so fields are typed and checked.
Errors come back as ``RolloutError`` with the HTTP status and the gateway's message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from bebop.service.gateway.schemas import (
    PromptIn as Prompt,
)
from bebop.service.gateway.schemas import (
    RolloutRequest,
    RolloutResult,
)
from bebop.service.gateway.schemas import (
    SamplingParamsIn as SamplingParams,
)

__all__ = ["AsyncRolloutClient", "Prompt", "RolloutClient", "RolloutError", "RolloutResult", "SamplingParams"]


class RolloutError(RuntimeError):
    def __init__(self, status: int, detail: Any):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def _request(prompts, sampling_params, seed, return_logprobs, task, stream) -> dict:
    req = RolloutRequest(
        prompts=[p if isinstance(p, Prompt) else Prompt(**p) for p in prompts],
        sampling_params=sampling_params or SamplingParams(),
        seed=seed,
        return_logprobs=return_logprobs,
        task=task,
        stream=stream,
    )
    return req.model_dump(exclude_none=True)


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            detail = r.json()
        except ValueError:
            detail = r.text
        raise RolloutError(r.status_code, detail)
    return r.json()


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class RolloutClient:
    """Synchronous client; one keep-alive connection pool per client."""

    def __init__(
        self,
        base_url: str,
        api_token: str | None = None,
        admin_token: str | None = None,
        timeout_s: float = 600.0,
    ):
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self.api, self.admin = _headers(api_token), _headers(admin_token)

    def rollouts(
        self,
        prompts: list[Prompt | dict],
        sampling_params: SamplingParams | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        task: str | None = None,
    ) -> list[RolloutResult]:
        body = _request(prompts, sampling_params, seed, return_logprobs, task, False)
        data = _check(self.http.post("/v1/rollouts", json=body, headers=self.api))
        return [RolloutResult(**r) for r in data["results"]]

    def stream_rollouts(
        self,
        prompts: list[Prompt | dict],
        sampling_params: SamplingParams | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        task: str | None = None,
    ) -> Iterator[RolloutResult]:
        """Samples as they finish (NDJSON), so a trainer can start on early ones."""
        body = _request(prompts, sampling_params, seed, return_logprobs, task, True)
        with self.http.stream("POST", "/v1/rollouts", json=body, headers=self.api) as r:
            if r.status_code >= 400:
                r.read()
                _check(r)
            for line in r.iter_lines():
                if line:
                    yield _result_line(line)

    def update_weights(
        self, model_path: str, version: str, pause_mode: str = "retract", continue_aborted: bool = False
    ) -> dict:
        """All-or-nothing reload from disk across every engine; raises RolloutError (409) on rollback."""
        body = {
            "model_path": model_path,
            "version": version,
            "pause_mode": pause_mode,
            "continue_aborted": continue_aborted,
        }
        return _check(self.http.post("/v1/weights", json=body, headers=self.admin))

    def weights(self) -> dict:
        return _check(self.http.get("/v1/weights", headers=self.api))

    def pause(self, mode: str = "retract") -> dict:
        return _check(self.http.post("/v1/pause", json={"mode": mode}, headers=self.admin))

    def resume(self) -> dict:
        return _check(self.http.post("/v1/resume", json={}, headers=self.admin))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RolloutClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRolloutClient:
    """asyncio client with the same methods (``await client.rollouts(...)``)."""

    def __init__(
        self,
        base_url: str,
        api_token: str | None = None,
        admin_token: str | None = None,
        timeout_s: float = 600.0,
    ):
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s, limits=limits)
        self.api, self.admin = _headers(api_token), _headers(admin_token)

    async def rollouts(
        self,
        prompts: list[Prompt | dict],
        sampling_params: SamplingParams | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        task: str | None = None,
    ) -> list[RolloutResult]:
        body = _request(prompts, sampling_params, seed, return_logprobs, task, False)
        data = _check(await self.http.post("/v1/rollouts", json=body, headers=self.api))
        return [RolloutResult(**r) for r in data["results"]]

    async def stream_rollouts(
        self,
        prompts: list[Prompt | dict],
        sampling_params: SamplingParams | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        task: str | None = None,
    ) -> AsyncIterator[RolloutResult]:
        body = _request(prompts, sampling_params, seed, return_logprobs, task, True)
        async with self.http.stream("POST", "/v1/rollouts", json=body, headers=self.api) as r:
            if r.status_code >= 400:
                await r.aread()
                _check(r)
            async for line in r.aiter_lines():
                if line:
                    yield _result_line(line)

    async def update_weights(
        self, model_path: str, version: str, pause_mode: str = "retract", continue_aborted: bool = False
    ) -> dict:
        body = {
            "model_path": model_path,
            "version": version,
            "pause_mode": pause_mode,
            "continue_aborted": continue_aborted,
        }
        return _check(await self.http.post("/v1/weights", json=body, headers=self.admin))

    async def weights(self) -> dict:
        return _check(await self.http.get("/v1/weights", headers=self.api))

    async def aclose(self) -> None:
        await self.http.aclose()


def _result_line(line: str) -> RolloutResult:
    data = json.loads(line)
    if "error" in data:
        raise RolloutError(502, data["error"])
    return RolloutResult(**data)
