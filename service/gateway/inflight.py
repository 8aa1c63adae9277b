"""In-flight accounting: what the gateway has accepted and not yet finished, in one place.

Two counters: rollout samples in flight through the whole gateway (bounded by ``max_inflight``: past
it a new rollout is refused with 429), and requests sent to each engine and not answered (its
``outstanding``, which least-outstanding routing reads). Both are raised when work is accepted and
lowered exactly once when it ends, whichever way it ends: a normal answer, an exception, a
cancelled call, a stream closed by its client, or a stream its client never started reading (then
only garbage collection ends it). A ``Ticket`` is that "exactly once".
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from prometheus_client import Gauge

from .pool import EngineState


class Overloaded(RuntimeError):
    """Too many samples in flight: the gateway answers 429 with Retry-After."""


class Ticket:
    """One accepted piece of work; ``release()`` runs its release function once, however often it
    is called (a stream's own ``finally`` and its finalizer may both call it). Also a context
    manager that releases on exit, for work that ends inside one ``with`` block."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None]):
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    @property
    def released(self) -> bool:
        return self._release is None

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Admission:
    """Rollout samples in flight through the gateway, against ``limit``, mirrored in ``gauge``."""

    def __init__(self, limit: int, gauge: Gauge):
        self.limit = limit
        self.gauge = gauge
        self.count = 0

    def admit(self, samples: int) -> Ticket:
        """A ticket for ``samples`` more samples, or ``Overloaded`` when they would pass the limit
        (nothing is counted then). Admission is all or nothing per request: a group is never split."""
        if self.count + samples > self.limit:
            raise Overloaded(f"{self.count} samples in flight; limit {self.limit}")
        self._add(samples)
        return Ticket(lambda: self._add(-samples))

    def _add(self, samples: int) -> None:
        self.count += samples
        self.gauge.set(self.count)


def hold(engine: EngineState) -> Ticket:
    """One request sent to ``engine``: its ``outstanding`` count is raised until the ticket is released."""
    engine.outstanding += 1

    def release() -> None:
        engine.outstanding -= 1

    return Ticket(release)
