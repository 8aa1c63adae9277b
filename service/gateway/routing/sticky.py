"""Sticky sessions: a session keeps its engine while that engine is usable (its KV cache holds the
conversation's prefix), otherwise it moves to the least loaded engine and stays there.

Requests without a session are routed by least outstanding work. The gateway's default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import RequestInfo, RoutingPolicy, usable
from .least_outstanding import LeastOutstanding

if TYPE_CHECKING:
    from ..pool import EngineState


class Sticky(RoutingPolicy):
    name = "sticky"

    def __init__(self, fallback: RoutingPolicy | None = None):
        self.fallback = fallback or LeastOutstanding()
        self.sessions: dict[str, str] = {}  # session_id -> engine url

    def select(self, engines: list[EngineState], request: RequestInfo) -> EngineState | None:
        candidates = usable(engines, request)
        if not candidates:
            return None
        if request.session_id is not None:
            pinned = self.sessions.get(request.session_id)
            for engine in candidates:
                if engine.url == pinned:
                    return engine
        chosen = self.fallback.select(candidates, request)
        if chosen is not None and request.session_id is not None:
            # also after a retry elsewhere: the session follows the engine that now holds its prefix
            self.sessions[request.session_id] = chosen.url
        return chosen

    def on_done(self, engine: EngineState, success: bool) -> None:
        self.fallback.on_done(engine, success)

    def on_removed(self, url: str) -> None:
        self.sessions = {s: u for s, u in self.sessions.items() if u != url}
        self.fallback.on_removed(url)
