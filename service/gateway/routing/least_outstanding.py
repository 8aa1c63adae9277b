"""Least outstanding work: the usable engine with the fewest requests in flight.

Ties go to the engine that has served fewer requests, then to the pool's order, so an idle pool
spreads sequential requests instead of sending them all to the first engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import RequestInfo, RoutingPolicy, usable

if TYPE_CHECKING:
    from ..pool import EngineState


class LeastOutstanding(RoutingPolicy):
    name = "least_outstanding"

    def select(self, engines: list[EngineState], request: RequestInfo) -> EngineState | None:
        candidates = usable(engines, request)
        if not candidates:
            return None
        return min(candidates, key=lambda e: (e.outstanding, e.served))
