"""``AsyncRolloutClient``: the SDK over ``httpx.AsyncClient``; ``_requests`` builds requests and answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import torch

from ._requests import (
    Call,
    Prompt,
    RolloutResult,
    SamplingParams,
    auth_headers,
    check,
    gateway_url,
    pause_call,
    refused,
    result_line,
    resume_call,
    rollouts_call,
    update_weights_call,
    weights_call,
)
from .sync import RolloutClient

# A trainer fans many concurrent rollouts out from one event loop; httpx's default pool (100) would
# queue them client-side.
MAX_CONNECTIONS = 1024
MAX_KEEPALIVE_CONNECTIONS = 256


class AsyncRolloutClient:
    """asyncio client with the same methods (``await client.rollouts(...)``)."""

    def __init__(
        self,
        base_url: str,
        api_token: str | None = None,
        admin_token: str | None = None,
        timeout_s: float = 600.0,
    ):
        limits = httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS
        )
        self.http = httpx.AsyncClient(base_url=gateway_url(base_url), timeout=timeout_s, limits=limits)
        self.api, self.admin = auth_headers(api_token), auth_headers(admin_token)
        self._sync: RolloutClient | None = None

    async def rollouts(
        self,
        prompts: list[Prompt | dict],
        sampling_params: SamplingParams | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        task: str | None = None,
    ) -> list[RolloutResult]:
        return await self._call(rollouts_call(prompts, sampling_params, seed, return_logprobs, task, False))

    async def stream_rollouts(
        self,
        prompts: list[Prompt | dict],
        sampling_params: SamplingParams | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        task: str | None = None,
    ) -> AsyncIterator[RolloutResult]:
        call = rollouts_call(prompts, sampling_params, seed, return_logprobs, task, True)
        async with self.http.stream(call.method, call.path, json=call.body, headers=self._auth(call)) as r:
            if refused(r):
                await r.aread()
                check(r)
            async for line in r.aiter_lines():
                if line:
                    yield result_line(line)

    async def update_weights(
        self, model_path: str, version: str, pause_mode: str = "retract", continue_aborted: bool = False
    ) -> dict:
        return await self._call(update_weights_call(model_path, version, pause_mode, continue_aborted))

    async def weights(self) -> dict:
        return await self._call(weights_call())

    async def init_weights_group(self, master_port: int, **kwargs: Any) -> dict:
        """As ``RolloutClient.init_weights_group``; the blocking rendezvous runs in a thread."""
        return await asyncio.to_thread(self._pusher().init_weights_group, master_port, **kwargs)

    async def push_weights(self, named_tensors: dict[str, torch.Tensor], version: str, **kwargs: Any) -> dict:
        """As ``RolloutClient.push_weights``; the broadcast runs in a thread."""
        return await asyncio.to_thread(self._pusher().push_weights, named_tensors, version, **kwargs)

    async def close_weights_group(self) -> None:
        """As ``RolloutClient.close_weights_group``."""
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close_weights_group)

    async def pause(self, mode: str = "retract") -> dict:
        return await self._call(pause_call(mode))

    async def resume(self) -> dict:
        return await self._call(resume_call())

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

    async def __aenter__(self) -> AsyncRolloutClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _auth(self, call: Call) -> dict[str, str]:
        return self.admin if call.admin else self.api

    async def _send(self, call: Call) -> httpx.Response:
        return await self.http.request(call.method, call.path, json=call.body, headers=self._auth(call))

    async def _call(self, call: Call) -> Any:
        return call.parse(await self._send(call))
