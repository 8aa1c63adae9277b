"""The routing interface: which engine serves a request.

A policy sees the pool's engines and what the request says about itself (its session, the engines
that already failed it) and names one engine, or None when none can serve it. Policies never see
an unhealthy or excluded engine: each starts with ``usable`` (one shared filter), so the health and
retry rules live here once and a policy is only its choice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the pool imports the policies: only type checkers need the state class here
    from ..pool import EngineState


@dataclass(frozen=True)
class RequestInfo:
    """What routing may know about a request."""

    session_id: str | None = None  # multi-turn conversations: the same id wants the same engine
    exclude: frozenset[str] = field(default_factory=frozenset)  # urls that failed or were busy for it


def usable(engines: Iterable[EngineState], request: RequestInfo) -> list[EngineState]:
    """The healthy engines the request has not excluded, in the pool's order."""
    return [e for e in engines if e.healthy and e.url not in request.exclude]


class RoutingPolicy:
    """Base class: ``select`` is the policy; the hooks are no-ops unless a policy keeps state."""

    name: str = "base"

    def select(self, engines: list[EngineState], request: RequestInfo) -> EngineState | None:
        """The engine for ``request`` among ``engines`` (all of the pool's), or None when none is usable."""
        raise NotImplementedError

    def on_done(self, engine: EngineState, success: bool) -> None:
        """An engine call chosen by this policy ended (``success``: the engine answered)."""

    def on_removed(self, url: str) -> None:
        """An engine left the pool: forget anything kept about it."""
