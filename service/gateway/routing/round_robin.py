"""Round robin: usable engines in turn, whatever their load.

For engines of equal speed under uniform requests, where it spreads work as well as least
outstanding without reading any counter; it ignores sessions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import RequestInfo, RoutingPolicy, usable

if TYPE_CHECKING:
    from ..pool import EngineState


class RoundRobin(RoutingPolicy):
    name = "round_robin"

    def __init__(self) -> None:
        self._turn = 0  # grows by one per choice; taken modulo the usable engines of that moment

    def select(self, engines: list[EngineState], request: RequestInfo) -> EngineState | None:
        candidates = usable(engines, request)
        if not candidates:
            return None
        chosen = candidates[self._turn % len(candidates)]
        self._turn += 1
        return chosen
