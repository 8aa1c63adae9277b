"""The engine pool: health, circuit breaking, discovery, and routing through a policy.

Each engine speaks SGLang's native HTTP protocol (``bebop engine`` or SGLang with the plugin).
The pool polls ``/health`` and ``/model_info`` (for ``weight_version``); an engine that fails
``failures_to_open`` calls in a row is taken out of rotation until a health check passes. Which
healthy engine serves a request is the routing policy's choice (``routing/``; by default sticky by
session over least outstanding work).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field

from .routing import DEFAULT_POLICY, RequestInfo, RoutingPolicy, make_policy
from .upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)


class NoEngineAvailable(RuntimeError):
    """Every engine is unhealthy or excluded; the gateway answers 503 with Retry-After."""


@dataclass
class EngineState:
    url: str
    healthy: bool = False
    outstanding: int = 0  # requests sent and not answered
    consecutive_failures: int = 0
    weight_version: str | None = None
    model_path: str | None = None
    can_stage: bool = False  # announces two-phase reloads (bebop engines; not stock SGLang)
    last_check: float = 0.0
    served: int = 0

    def as_dict(self) -> dict:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "outstanding": self.outstanding,
            "weight_version": self.weight_version,
            "model_path": self.model_path,
            "served": self.served,
        }


@dataclass
class EnginePool:
    client: Upstream
    failures_to_open: int = 3
    health_timeout_s: float = 5.0  # per /health and /model_info call of a health check
    policy: RoutingPolicy = field(default_factory=lambda: make_policy(DEFAULT_POLICY))
    engines: dict[str, EngineState] = field(default_factory=dict)
    discovered: set[str] = field(default_factory=set)  # urls that came from DNS

    def add(self, url: str) -> EngineState:
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"engine url must start with http:// or https://, got {url!r}")
        return self.engines.setdefault(url, EngineState(url))

    def remove(self, url: str) -> bool:
        url = url.rstrip("/")
        self.policy.on_removed(url)
        return self.engines.pop(url, None) is not None

    def healthy(self) -> list[EngineState]:
        return [e for e in self.engines.values() if e.healthy]

    def select(self, session_id: str | None = None, exclude: set[str] | None = None) -> EngineState:
        """The policy's choice among healthy engines not in ``exclude``; NoEngineAvailable when none."""
        request = RequestInfo(session_id, frozenset(exclude or ()))
        chosen = self.policy.select(list(self.engines.values()), request)
        if chosen is None:
            raise NoEngineAvailable("no healthy engine is available")
        return chosen

    def record_failure(self, engine: EngineState) -> None:
        self.policy.on_done(engine, success=False)
        engine.consecutive_failures += 1
        if engine.consecutive_failures >= self.failures_to_open and engine.healthy:
            log.warning(
                "engine %s taken out of rotation after %d failures", engine.url, engine.consecutive_failures
            )
            engine.healthy = False

    def record_success(self, engine: EngineState) -> None:
        self.policy.on_done(engine, success=True)
        engine.consecutive_failures = 0
        engine.served += 1

    async def check(self, engine: EngineState) -> None:
        try:
            r = await self.client.get(engine.url + "/health", self.health_timeout_s)
            info = await self.client.get(engine.url + "/model_info", self.health_timeout_s)
            ok = r.status_code == 200 and info.status_code == 200
            if ok:
                data = info.json()
                engine.weight_version = data.get("weight_version")
                engine.model_path = data.get("model_path")
                engine.can_stage = bool(data.get("bebop_staged_weights", False))
        except (UpstreamError, ValueError):
            ok = False
        if ok and not engine.healthy:
            log.info("engine %s is healthy", engine.url)
        engine.healthy = ok
        if ok:
            engine.consecutive_failures = 0
        engine.last_check = time.monotonic()

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(e) for e in list(self.engines.values())))

    async def discover(self, names: list[str]) -> None:
        """Resolve each ``host:port`` (a Kubernetes headless service resolves to every pod) and
        make the pool follow it: new addresses join, vanished ones leave."""
        loop = asyncio.get_running_loop()
        found: set[str] = set()
        for name in names:
            host, _, port = name.rpartition(":")
            try:
                infos = await loop.getaddrinfo(
                    host, int(port), family=socket.AF_INET, type=socket.SOCK_STREAM
                )
            except (OSError, ValueError) as err:
                log.warning("cannot resolve %s: %s", name, err)
                return  # keep the pool as it is rather than dropping engines on a DNS hiccup
            found |= {f"http://{info[4][0]}:{port}" for info in infos}
        for url in found - self.discovered:
            self.add(url)
        for url in self.discovered - found:
            self.remove(url)
        self.discovered = found

    async def health_loop(self, interval_s: float, dns_names: list[str] | None = None) -> None:
        while True:
            if dns_names:
                await self.discover(dns_names)
            await self.check_all()
            await asyncio.sleep(interval_s)
