"""Gateway metrics (``bebop_*``): rollouts, latency, reloads, engines, and acceptance against entropy.

Beyond SGLang: an online least-squares fit ``acceptance = a - b * entropy`` over the last
``FIT_WINDOW`` samples, exported as gauges, so an alert can fire when acceptance leaves the band
the fit predicts (the paper's point: with rejection sampling and a TV-trained head, b stays small).
"""

from __future__ import annotations

import collections

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .pool import EnginePool
from .schemas import RolloutResult

FIT_WINDOW = 2048
MAX_TASK_LABELS = 16  # without a configured set: the first tasks seen keep their name, later ones "other"
MAX_VERSION_LABELS = 4  # weight versions kept as labels; an older version's series are dropped
MAX_LABEL_CHARS = 64
ENTROPY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
RATE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
# Rollouts run for minutes: the client library's default buckets stop at 10 s, so a p99 above that
# could not be told apart; these reach the default --request-timeout (600 s).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
RELOAD_OUTCOMES = ("success", "rolled_back")


class GatewayMetrics:
    """Every label has a bounded set of values: a client's free text never makes a new series."""

    def __init__(self, tasks: list[str] | None = None) -> None:
        self._tasks_configured = bool(tasks)
        self._tasks = {t[:MAX_LABEL_CHARS] for t in tasks or []}
        self._versions: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "bebop_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "bebop_http_request_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.samples = Counter(
            "bebop_rollout_samples", "Finished samples", ["task", "weight_version", "finish"], registry=r
        )
        self.tokens = Counter(
            "bebop_rollout_tokens", "Generated tokens", ["task", "weight_version"], registry=r
        )
        self.accept_rate = Histogram(
            "bebop_spec_accept_rate",
            "Draft acceptance per sample",
            ["task", "weight_version"],
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.accept_position = Gauge(
            "bebop_spec_accept_per_position",
            "Mean acceptance by draft position (last sample window)",
            ["position"],
            registry=r,
        )
        self.accept_length = Histogram(
            "bebop_spec_accept_length", "Tokens per verify step", ["task"], registry=r
        )
        self.entropy = Histogram(
            "bebop_target_entropy",
            "Mean target entropy per sample (nats)",
            ["task", "weight_version"],
            buckets=ENTROPY_BUCKETS,
            registry=r,
        )
        self.fit_a = Gauge(
            "bebop_accept_entropy_fit_intercept", "a in acceptance = a - b * entropy", registry=r
        )
        self.fit_b = Gauge("bebop_accept_entropy_fit_slope", "b in acceptance = a - b * entropy", registry=r)
        self.fit_resid = Gauge("bebop_accept_entropy_fit_residual_std", "Residual std of the fit", registry=r)
        self.fit_last_gap = Gauge(
            "bebop_accept_entropy_fit_gap", "Mean acceptance of the last window minus the fit", registry=r
        )
        self.fit_n = Gauge("bebop_accept_entropy_fit_samples", "Samples in the fit window", registry=r)
        self.reloads = Counter("bebop_weight_reloads", "Weight reloads by outcome", ["outcome"], registry=r)
        for outcome in RELOAD_OUTCOMES:  # exported at 0 from the start, so increase() sees the first one
            self.reloads.labels(outcome)
        self.reload_seconds = Histogram("bebop_weight_reload_seconds", "Reload duration", registry=r)
        self.engine_healthy = Gauge(
            "bebop_engine_healthy", "1 if the engine is in rotation", ["engine"], registry=r
        )
        self.engine_outstanding = Gauge(
            "bebop_engine_outstanding", "Requests in flight per engine", ["engine"], registry=r
        )
        self.engine_version = Gauge(
            "bebop_engine_weight_version",
            "1 for the weight version each engine serves",
            ["engine", "version"],
            registry=r,
        )
        self.inflight = Gauge("bebop_rollouts_inflight", "Samples in flight through the gateway", registry=r)
        self._window: collections.deque[tuple[float, float, list]] = collections.deque(maxlen=FIT_WINDOW)

    def task_label(self, task: str | None) -> str:
        if task is None:
            return "none"
        task = task[:MAX_LABEL_CHARS]
        if task not in self._tasks and not self._tasks_configured and len(self._tasks) < MAX_TASK_LABELS:
            self._tasks.add(task)
        return task if task in self._tasks else "other"

    def version_label(self, version: str | None) -> str:
        """The last MAX_VERSION_LABELS versions keep their series; the oldest one's are removed."""
        version = (version or "unknown")[:MAX_LABEL_CHARS]
        if version in self._versions:
            self._versions.move_to_end(version)
            return version
        self._versions[version] = None
        while len(self._versions) > MAX_VERSION_LABELS:
            old, _ = self._versions.popitem(last=False)
            for metric in (self.samples, self.tokens, self.accept_rate, self.entropy):
                for labels in list(metric._metrics):  # prometheus_client keeps children by label tuple
                    if old in labels:
                        metric.remove(*labels)
        return version

    def observe(self, result: RolloutResult, task: str | None) -> None:
        task = self.task_label(task)
        version = self.version_label(result.weight_version)
        finish = (result.finish_reason or {}).get("type", "unknown")
        self.samples.labels(task, version, finish).inc()
        self.tokens.labels(task, version).inc(len(result.output_ids))
        if result.spec.accept_length is not None:
            self.accept_length.labels(task).observe(result.spec.accept_length)
        if result.entropy_mean is not None:
            self.entropy.labels(task, version).observe(result.entropy_mean)
        if result.spec.accept_rate is not None:
            self.accept_rate.labels(task, version).observe(result.spec.accept_rate)
            if result.entropy_mean is not None:
                self._window.append(
                    (result.entropy_mean, result.spec.accept_rate, result.spec.accept_per_position)
                )
                self._refit()

    def _refit(self) -> None:
        n = len(self._window)
        self.fit_n.set(n)
        xs = [e for e, _, _ in self._window]
        ys = [a for _, a, _ in self._window]
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 1e-12 else 0.0
        a = my - slope * mx
        resid = [y - (a + slope * x) for x, y in zip(xs, ys, strict=True)]
        self.fit_a.set(a)
        self.fit_b.set(-slope)
        self.fit_resid.set((sum(r * r for r in resid) / n) ** 0.5)
        recent = resid[-min(64, n) :]
        self.fit_last_gap.set(sum(recent) / len(recent))
        positions = [p for _, _, p in self._window if p]
        if positions:
            for k in range(max(len(p) for p in positions)):
                vals = [p[k] for p in positions if len(p) > k and p[k] is not None]
                if vals:
                    self.accept_position.labels(str(k + 1)).set(sum(vals) / len(vals))

    def refresh_engines(self, pool: EnginePool) -> None:
        # An engine that left the pool (DNS, DELETE /v1/engines) leaves the series too: a stale 0
        # would keep an engine-down alert firing for an engine that no longer exists.
        for gauge in (self.engine_healthy, self.engine_outstanding, self.engine_version):
            gauge.clear()
        for e in pool.engines.values():
            self.engine_healthy.labels(e.url).set(1 if e.healthy else 0)
            self.engine_outstanding.labels(e.url).set(e.outstanding)
            self.engine_version.labels(e.url, e.weight_version or "unknown").set(1)
