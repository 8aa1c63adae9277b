"""Prometheus figures of one engine (``bebop_engine_*``), in a registry of its own."""

from __future__ import annotations

import collections
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .scheduler import Request

ENTROPY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
RATE_WINDOW_S = 10.0  # window of the tokens/s gauge
ACCEPT_LENGTH_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bebop_engine_requests", "Finished requests by finish reason", ["reason"], registry=r
        )
        self.tokens = Counter("bebop_engine_generated_tokens", "Generated tokens", registry=r)
        self.prompt_tokens = Counter("bebop_engine_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.drafts_proposed = Counter(
            "bebop_engine_drafts_proposed",
            "Draft tokens reaching verification, by draft position",
            ["position"],
            registry=r,
        )
        self.drafts_accepted = Counter(
            "bebop_engine_drafts_accepted",
            "Draft tokens accepted, by draft position",
            ["position"],
            registry=r,
        )
        self.accept_length = Histogram(
            "bebop_engine_accept_length",
            "Tokens per verify step, per request",
            buckets=ACCEPT_LENGTH_BUCKETS,
            registry=r,
        )
        self.entropy = Histogram(
            "bebop_engine_target_entropy",
            "Mean target entropy per request (nats/token)",
            buckets=ENTROPY_BUCKETS,
            registry=r,
        )
        self.running = Gauge("bebop_engine_running_requests", "Requests in the running batch", registry=r)
        self.queued = Gauge("bebop_engine_queued_requests", "Requests waiting for a slot", registry=r)
        self.weight_updates = Counter(
            "bebop_engine_weight_updates", "Weight updates by outcome", ["outcome"], registry=r
        )

        self.tokens_per_s = Gauge(
            "bebop_engine_tokens_per_second",
            f"Generated tokens per second over the last {RATE_WINDOW_S:.0f} s",
            registry=r,
        )
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    def observe_tokens(self, n: int) -> None:
        """Called per step with the tokens it produced (loop thread)."""
        self.tokens.inc(n)
        now = time.monotonic()
        self._recent.append((now, n))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def refresh_rate(self) -> None:
        now = time.monotonic()
        recent = [n for t, n in list(self._recent) if t >= now - RATE_WINDOW_S]
        self.tokens_per_s.set(sum(recent) / RATE_WINDOW_S)

    def observe_finished(self, req: Request) -> None:
        self.requests.labels(req.finish_reason["type"]).inc()
        self.prompt_tokens.inc(len(req.prompt))
        for k, (reached, accepted) in enumerate(
            zip(req.position_reached, req.position_accepted, strict=True)
        ):
            self.drafts_proposed.labels(str(k + 1)).inc(reached)
            self.drafts_accepted.labels(str(k + 1)).inc(accepted)
        if req.verify_ct:  # the first token comes from the prefill, not from a verify step
            self.accept_length.observe((len(req.output) - 1) / req.verify_ct)
        if req.entropies:
            self.entropy.observe(sum(req.entropies) / len(req.entropies))
