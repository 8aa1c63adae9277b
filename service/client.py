"""Trainer SDK: ``RolloutClient`` (sync) and ``AsyncRolloutClient`` over the gateway's HTTP API.

    client = RolloutClient("http://127.0.0.1:8000", api_token=..., admin_token=...)
    results = client.rollouts([Prompt(text="12+35=", n=8)], SamplingParams(max_new_tokens=64), seed=1)
    client.update_weights("/ckpt/step-10", version="step-10", pause_mode="retract")

    # or push from the trainer's memory: the trainer becomes rank 0 of a group with every engine
    client.init_weights_group(master_port=29600)
    client.push_weights(dict(model.named_parameters()), version="step-11")

Results are the gateway's pydantic models (``RolloutResult``), so fields are typed and checked.
Errors come back as ``RolloutError`` with the HTTP status and the gateway's message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import torch

from .gateway.schemas import (
    PromptIn as Prompt,
)
from .gateway.schemas import (
    RolloutRequest,
    RolloutResult,
)
from .gateway.schemas import (
    SamplingParamsIn as SamplingParams,
)
from .weight_push import (
    WeightPushError,
    broadcast_until_answered,
    join_as_rank0,
    tensor_manifest,
)

__all__ = [
    "AsyncRolloutClient",
    "Prompt",
    "RolloutClient",
    "RolloutError",
    "RolloutResult",
    "SamplingParams",
    "WeightPushError",
]


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
        self._group: str | None = None  # the weight-update group this process is rank 0 of
        self._group_timeout_s = 120.0

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

    def init_weights_group(
        self,
        master_port: int,
        master_address: str = "127.0.0.1",
        group_name: str = "bebop_weights",
        backend: str = "gloo",
        timeout_s: float = 120.0,
    ) -> dict:
        """Make this process rank 0 of a weight-update group with every engine behind the gateway.

        ``master_address`` must be reachable from the engines (this trainer's address); use
        backend ``nccl`` on GPUs. Returns the layout (world_size, each engine's rank offset).
        """
        layout = _check(self.http.get("/v1/weights/group", headers=self.admin))
        body = {
            "master_address": master_address,
            "master_port": master_port,
            "world_size": layout["world_size"],
            "group_name": group_name,
            "backend": backend,
        }
        with ThreadPoolExecutor(1) as pool:
            # The engines wait in their rendezvous for rank 0: ask first, then join.
            answer = pool.submit(self.http.post, "/v1/weights/group", json=body, headers=self.admin)
            join_as_rank0(master_address, master_port, layout["world_size"], backend, timeout_s)
            self._group, self._group_timeout_s = group_name, timeout_s
            return _check(answer.result())

    def push_weights(
        self,
        named_tensors: dict[str, torch.Tensor],
        version: str,
        pause_mode: str = "retract",
        continue_aborted: bool = False,
    ) -> dict:
        """Broadcast ``named_tensors`` into every engine; all engines commit them or none does.

        Raises RolloutError (409 with per-engine detail when the engines refused and kept the old
        weights) or WeightPushError (refused before the broadcast: create the group again).
        """
        group = self._group
        if group is None:
            raise WeightPushError("no weight group", "call init_weights_group first")
        body = {
            **tensor_manifest(named_tensors, group),
            "version": version,
            "pause_mode": pause_mode,
            "continue_aborted": continue_aborted,
        }
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(self.http.post, "/v1/weights/distributed", json=body, headers=self.admin)
            r = broadcast_until_answered(
                named_tensors, answer, lambda r: r.status_code >= 400, self._group_timeout_s
            )
        return _check(r)

    def close_weights_group(self) -> None:
        """Leave the trainer's side of the group (the engines keep theirs until the next init)."""
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self._group = None

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
        self._sync: RolloutClient | None = None

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

    async def init_weights_group(self, master_port: int, **kwargs: Any) -> dict:
        """As ``RolloutClient.init_weights_group``; the blocking rendezvous runs in a thread."""
        return await asyncio.to_thread(self._pusher().init_weights_group, master_port, **kwargs)

    async def push_weights(self, named_tensors: dict[str, torch.Tensor], version: str, **kwargs: Any) -> dict:
        """As ``RolloutClient.push_weights``; the broadcast runs in a thread."""
        return await asyncio.to_thread(self._pusher().push_weights, named_tensors, version, **kwargs)

    def _pusher(self) -> RolloutClient:
        # torch.distributed calls block: a sync client of our own runs them off the event loop.
        if self._sync is None:
            self._sync = RolloutClient(str(self.http.base_url), timeout_s=self.http.timeout.read or 600.0)
            self._sync.admin = self.admin
        return self._sync

    async def aclose(self) -> None:
        await self.http.aclose()
        if self._sync is not None:
            self._sync.close()


def _result_line(line: str) -> RolloutResult:
    data = json.loads(line)
    if "error" in data:
        raise RolloutError(502, data["error"])
    return RolloutResult(**data)
