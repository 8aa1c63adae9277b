"""The gateway's HTTP client to its engines (aiohttp).

Every rollout passes through here, so its CPU cost per request is the gateway's overhead. httpx's
AsyncClient costs several times more CPU per call than aiohttp (measured in
``docs/benchmarks.md``, `bebop bench gateway`), and on a machine the gateway shares with its
engines that CPU is taken from decoding. The interface is the few calls the gateway makes; a
failure to get any answer is ``UpstreamError`` (safe to retry elsewhere: nothing came back).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp


class UpstreamError(Exception):
    """No answer: connection refused or reset, or a timeout."""


@dataclass
class UpstreamResponse:
    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


class UpstreamStream:
    """A streaming answer whose status is known; iterate ``chunks()``, then ``close()``."""

    def __init__(self, response: aiohttp.ClientResponse):
        self._response = response
        self.status_code = response.status

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as err:
            raise UpstreamError(f"{type(err).__name__}: {err}") from err

    async def read(self) -> UpstreamResponse:
        try:
            return UpstreamResponse(self.status_code, await self._response.read())
        except (aiohttp.ClientError, TimeoutError) as err:
            raise UpstreamError(f"{type(err).__name__}: {err}") from err

    def close(self) -> None:
        self._response.release()


class Upstream:
    """One connection pool for all engines; create it inside the event loop that uses it."""

    def __init__(
        self,
        timeout_s: float,
        max_connections: int = 2048,
        token: str | None = None,
        connect_timeout_s: float = 10.0,
    ):
        self.timeout_s = timeout_s  # between bytes of an answer (a long generation is slow, not dead)
        self.connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        # BEBOP_ENGINE_TOKEN, as SGLang's --api-key expects it
        self._headers = {"Authorization": f"Bearer {token}"} if token else None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # lazily: aiohttp binds the session to the running loop
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector, json_serialize=json.dumps, headers=self._headers
            )
        return self._session

    def _timeout(self, timeout_s: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout_s, sock_read=timeout_s or self.timeout_s
        )

    async def get(self, url: str, timeout_s: float | None = None) -> UpstreamResponse:
        return await self._call("GET", url, None, timeout_s)

    async def post(self, url: str, body: Any, timeout_s: float | None = None) -> UpstreamResponse:
        return await self._call("POST", url, body, timeout_s)

    async def _call(self, method: str, url: str, body: Any, timeout_s: float | None) -> UpstreamResponse:
        try:
            async with self.session.request(method, url, json=body, timeout=self._timeout(timeout_s)) as r:
                return UpstreamResponse(r.status, await r.read())
        except (aiohttp.ClientError, TimeoutError) as err:
            raise UpstreamError(f"{type(err).__name__}: {err}") from err

    async def open_stream(self, url: str, body: Any, timeout_s: float | None = None) -> UpstreamStream:
        try:
            r = await self.session.post(url, json=body, timeout=self._timeout(timeout_s))
        except (aiohttp.ClientError, TimeoutError) as err:
            raise UpstreamError(f"{type(err).__name__}: {err}") from err
        return UpstreamStream(r)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
