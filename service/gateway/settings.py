"""Gateway settings: one object, read from flags and the environment in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..httpguard import LOOPBACK, MAX_BODY_BYTES, check_token
from .routing import DEFAULT_POLICY, check_policy_name


@dataclass
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8000
    engine_urls: list[str] = field(default_factory=list)
    engine_dns: list[str] = field(default_factory=list)  # host:port names resolving to many engines
    api_token: str | None = None  # BEBOP_API_TOKEN: rollouts and /generate
    admin_token: str | None = None  # BEBOP_ADMIN_TOKEN: weights, pause, abort, engines, /metrics
    metrics_token: str | None = None  # BEBOP_METRICS_TOKEN: a scrape-only secret for /metrics
    engine_token: str | None = None  # BEBOP_ENGINE_TOKEN: sent to every engine
    metric_tasks: list[str] = field(default_factory=list)  # task labels kept as they are (else "other")
    weights_roots: list[Path] = field(default_factory=list)  # where /v1/weights may load from
    routing_policy: str = DEFAULT_POLICY  # BEBOP_ROUTING_POLICY: a name in routing.POLICIES
    max_body_bytes: int = MAX_BODY_BYTES  # larger request bodies get 413
    request_timeout_s: float = 600.0  # per engine call (generate, weight updates)
    connect_timeout_s: float = 10.0  # to open a connection to an engine: a live one accepts at once
    health_timeout_s: float = 5.0  # per /health or /model_info call of a health check
    info_timeout_s: float = 30.0  # /model_info and /server_info reads of a reload (engines may be busy)
    engine_start_timeout_s: float = 300.0  # embedded engines: load the model and answer /health
    shutdown_grace_s: float = 5.0  # SIGTERM: in-flight calls get this long, then the gateway stops
    max_inflight: int = 4096  # accepted rollouts in flight before 429
    health_interval_s: float = 2.0
    failures_to_open: int = 3  # consecutive failures that open an engine's circuit

    @classmethod
    def from_env(cls, **overrides) -> GatewaySettings:
        """Flags (``overrides``) first, then BEBOP_* variables; validated. A ``None`` override means
        "not given" for the routing policy, so the variable applies."""
        policy = overrides.pop("routing_policy", None)
        s = cls(**overrides)
        s.api_token = s.api_token or os.environ.get("BEBOP_API_TOKEN") or None
        s.admin_token = s.admin_token or os.environ.get("BEBOP_ADMIN_TOKEN") or None
        s.metrics_token = s.metrics_token or os.environ.get("BEBOP_METRICS_TOKEN") or None
        s.engine_token = s.engine_token or os.environ.get("BEBOP_ENGINE_TOKEN") or None
        s.routing_policy = policy or os.environ.get("BEBOP_ROUTING_POLICY") or s.routing_policy
        tasks = os.environ.get("BEBOP_METRIC_TASKS")
        if tasks and not s.metric_tasks:
            s.metric_tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        s.validate()
        return s

    def validate(self) -> None:
        for name, token in (
            ("BEBOP_API_TOKEN", self.api_token),
            ("BEBOP_ADMIN_TOKEN", self.admin_token),
            ("BEBOP_METRICS_TOKEN", self.metrics_token),
            ("BEBOP_ENGINE_TOKEN", self.engine_token),
        ):
            check_token(name, token)
        check_policy_name(self.routing_policy)  # at start-up, not at the first request
        if self.host not in LOOPBACK and not (self.api_token and self.admin_token):
            raise ValueError(
                f"refusing to listen on {self.host} without BEBOP_API_TOKEN and BEBOP_ADMIN_TOKEN: "
                "without tokens the gateway only listens on loopback"
            )
