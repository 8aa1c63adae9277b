"""The gateway's state: everything the routes need, built once per process from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from .inflight import Admission
from .metrics import GatewayMetrics
from .pool import EnginePool
from .reload import ReloadCoordinator
from .rollouts import Forwarder, RolloutService
from .routing import make_policy
from .settings import GatewaySettings
from .upstream import Upstream


@dataclass(frozen=True)
class Tokens:
    """Which secrets open which routes (empty: open, which the settings allow on loopback only)."""

    api: list[str]
    admin: list[str]
    metrics: list[str]

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Tokens:
        """A route class whose own token is not set takes the other configured token, so no route is
        open once any token is set (see docs/security.md)."""
        api = settings.api_token or settings.admin_token
        admin = settings.admin_token or settings.api_token
        scrape = [t for t in (admin, settings.metrics_token) if t]
        return cls(api=[api] if api else [], admin=[admin] if admin else [], metrics=scrape)


class Gateway:
    """The engine pool, the forwarder, the reload coordinator, the rollout service, the metrics and
    the admission counter, wired together; one per process. Building it needs no event loop: the
    upstream client opens its connection pool in the serving loop, at its first call."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.tokens = Tokens.from_settings(settings)
        self.client = Upstream(
            settings.request_timeout_s,
            token=settings.engine_token,
            connect_timeout_s=settings.connect_timeout_s,
        )
        self.pool = EnginePool(
            self.client,
            settings.failures_to_open,
            health_timeout_s=settings.health_timeout_s,
            policy=make_policy(settings.routing_policy),
        )
        for url in settings.engine_urls:
            self.pool.add(url)
        self.forwarder = Forwarder(self.pool, settings.request_timeout_s)
        self.reloads = ReloadCoordinator(
            self.pool,
            list(settings.weights_roots),
            settings.request_timeout_s,
            info_timeout_s=settings.info_timeout_s,
        )
        self.rollouts = RolloutService(self.forwarder, self.reloads)
        self.metrics = GatewayMetrics(settings.metric_tasks)
        self.admission = Admission(settings.max_inflight, self.metrics.inflight)
