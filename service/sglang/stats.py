"""Per-request acceptance and entropy inside SGLang: ``meta_info`` fields and ``bebop_engine_*`` series.

The same names as the embedded engine (service/engine/protocol.py, service/engine/metrics.py), so the
gateway, dashboards and alerts read both engines alike:

    meta_info  spec_accept_per_position  [G] accepted / reached, per draft position
               entropy_mean              mean target entropy of the emitted tokens (nats)
               output_token_entropy      per emitted token, when the request sets
                                         sampling_params.custom_params.return_entropy = true
    metrics    bebop_engine_drafts_proposed{position}, bebop_engine_drafts_accepted{position},
               bebop_engine_accept_length (tokens per verify step, per request),
               bebop_engine_target_entropy (mean per finished request)

Flow, all in the scheduler process except the last step:
1. ``record_verify`` (around ``eagle_sample``, eagle_utils.py:521) takes the kernel's last
   (num_accepted, entropy) and starts a non-blocking copy to the host: nothing waits on the GPU.
2. ``drain`` (from the output streamer, once per output step) waits for those copies, which are
   long done by then, and adds them up per request id.
3. ``streamer_class`` subclasses SGLang's ``SchedulerOutputStreamer`` (the extension point of
   output_streamer.py:237-254, chosen by ``Scheduler.get_output_streamer_class``,
   scheduler.py:2647) to put the fields into ``customized_info``.
4. The tokenizer manager extends list-valued fields across output steps
   (tokenizer_manager.py:2810-2838); ``finish_meta_info`` keeps the latest summary instead.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

ACCEPT_KEY = "spec_accept_per_position"
ENTROPY_MEAN_KEY = "entropy_mean"
ENTROPY_TOKENS_KEY = "output_token_entropy"
SUMMARY_KEYS = (ACCEPT_KEY, ENTROPY_MEAN_KEY)  # one current value, not a growing list
RETURN_ENTROPY_PARAM = "return_entropy"  # in sampling_params.custom_params
# Same buckets as the embedded engine's series.
ENTROPY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
ACCEPT_LENGTH_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)


@dataclass
class RequestStats:
    """What one request's verify steps have shown so far."""

    reached: list[int] = field(default_factory=list)  # [G] verifies that reached draft position k
    accepted: list[int] = field(default_factory=list)  # [G] drafts accepted at position k
    entropies: list[float] = field(default_factory=list)  # per emitted token, nats
    streamed: int = 0  # entropies already sent in output_token_entropy

    def add(self, num_accepted: int, entropy_row: list[float]) -> None:
        G = len(entropy_row) - 1
        if len(self.reached) < G:
            self.reached += [0] * (G - len(self.reached))
            self.accepted += [0] * (G - len(self.accepted))
        for k in range(min(num_accepted + 1, G)):  # draft k is reached when all before it passed
            self.reached[k] += 1
            self.accepted[k] += int(k < num_accepted)
        self.entropies += entropy_row[: num_accepted + 1]  # the emitted tokens' laws

    def accept_per_position(self) -> list[float | None]:
        return [(a / r) if r else None for a, r in zip(self.accepted, self.reached, strict=True)]

    def entropy_mean(self) -> float | None:
        finite = [e for e in self.entropies if e == e]  # NaN when the entropy read is off
        return sum(finite) / len(finite) if finite else None


class VerifyStats:
    """Process-wide: verifies waiting for their host copy, and the per-request sums."""

    def __init__(self) -> None:
        self._pending: collections.deque = collections.deque()
        self._by_rid: dict[str, RequestStats] = {}
        self._lock = threading.Lock()
        self._metrics = None

    def record(self, rids: list[str], num_accepted: torch.Tensor, entropy: torch.Tensor) -> None:
        """Queue one verify: rids [bs], num_accepted [bs] int64, entropy [bs, N] float32 (device)."""
        n_host = num_accepted.to("cpu", non_blocking=True)
        e_host = entropy.to("cpu", non_blocking=True)
        event = None
        if num_accepted.is_cuda:
            event = torch.cuda.Event()
            event.record()
        with self._lock:
            self._pending.append((rids, n_host, e_host, event))

    def drain(self) -> None:
        """Add up every queued verify (waits only for copies that the GPU has long finished)."""
        with self._lock:
            pending, self._pending = self._pending, collections.deque()
        metrics = self._metrics_or_none()
        for rids, n_host, e_host, event in pending:
            if event is not None:
                event.synchronize()
            for rid, n, row in zip(rids, n_host.tolist(), e_host.tolist(), strict=True):
                self._by_rid.setdefault(rid, RequestStats()).add(n, row)
                if metrics is not None:
                    metrics.observe_verify(n, len(row) - 1)

    def get(self, rid: str) -> RequestStats | None:
        return self._by_rid.get(rid)

    def finish(self, rid: str) -> None:
        stats = self._by_rid.pop(rid, None)
        metrics = self._metrics_or_none()
        if stats is not None and metrics is not None and stats.entropy_mean() is not None:
            metrics.entropy.observe(stats.entropy_mean())

    def _metrics_or_none(self):
        if self._metrics is None:
            try:
                self._metrics = _Metrics()
            except Exception:  # prometheus_client missing or names taken: statistics still flow
                logger.exception("bebop plugin: no Prometheus series")
                self._metrics = False
        return self._metrics or None


class _Metrics:
    """``bebop_engine_*`` series in the default registry: with SGLang's --enable-metrics they are
    written to PROMETHEUS_MULTIPROC_DIR and served by its /metrics beside the ``sglang:`` ones."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.proposed = Counter(
            "bebop_engine_drafts_proposed",
            "Draft tokens reaching verification, by draft position",
            ["position"],
        )
        self.accepted = Counter(
            "bebop_engine_drafts_accepted", "Draft tokens accepted, by draft position", ["position"]
        )
        self.accept_length = Histogram(
            "bebop_engine_accept_length", "Tokens per verify step, per request", buckets=ACCEPT_LENGTH_BUCKETS
        )
        self.entropy = Histogram(
            "bebop_engine_target_entropy",
            "Mean target entropy per request (nats/token)",
            buckets=ENTROPY_BUCKETS,
        )

    def observe_verify(self, num_accepted: int, G: int) -> None:
        self.accept_length.observe(num_accepted + 1)
        for k in range(min(num_accepted + 1, G)):
            self.proposed.labels(position=str(k + 1)).inc()
            if k < num_accepted:
                self.accepted.labels(position=str(k + 1)).inc()


STATS = VerifyStats()


# ----------------------------------------------------------------------------- hooks
def around_eagle_sample(original, verify_input, batch, *args, **kwargs):
    """AROUND hook of ``eagle_sample``: run it, then queue the kernel's statistics for its rows."""
    from .kernel import take_last_result

    take_last_result()  # drop a result left by a call that was not a verify
    out = original(verify_input, batch, *args, **kwargs)
    result = take_last_result()
    reqs = getattr(batch, "reqs", None)
    if result is not None and reqs is not None and len(reqs) == result.num_accepted.shape[0]:
        STATS.record([req.rid for req in reqs], result.num_accepted, result.entropy)
    return out


def wants_entropy(req) -> bool:
    params = getattr(getattr(req, "sampling_params", None), "custom_params", None) or {}
    return bool(params.get(RETURN_ENTROPY_PARAM))


def streamer_class(base: type) -> type:
    """SGLang's output streamer class ``base`` with Bebop's fields added to ``customized_info``."""

    class BebopOutputStreamer(base):
        has_additional_customized_info = True

        def build_additional_customized_info(self, reqs: list) -> dict[str, list]:
            fields = dict(super().build_additional_customized_info(reqs))
            STATS.drain()
            accept, mean, tokens = [], [], []
            for req in reqs:
                stats = STATS.get(req.rid) or RequestStats()
                accept.append([stats.accept_per_position()])
                mean.append([stats.entropy_mean()])
                new = stats.entropies[stats.streamed :] if wants_entropy(req) else []
                stats.streamed += len(new)
                tokens.append(new)
                if req.finished():
                    STATS.finish(req.rid)
            fields.update({ACCEPT_KEY: accept, ENTROPY_MEAN_KEY: mean, ENTROPY_TOKENS_KEY: tokens})
            return fields

    BebopOutputStreamer.__qualname__ = f"Bebop{base.__qualname__}"
    return BebopOutputStreamer


def after_get_output_streamer_class(result: type, scheduler, *args, **kwargs) -> type:
    """AFTER hook of ``Scheduler.get_output_streamer_class``."""
    if getattr(scheduler, "rust_server", None) is not None:
        # SGLang refuses extra customized_info with its Rust egress (output_streamer.py:83-88).
        logger.warning("bebop plugin: no per-request statistics with the Rust server egress")
        return result
    return streamer_class(result)


def after_update_request_meta_info(result, manager, meta_info: dict, *args, **kwargs) -> None:
    """AFTER hook of ``TokenizerManager.update_request_meta_info``: summaries hold their latest value."""
    for key in SUMMARY_KEYS:
        values = meta_info.get(key)
        if isinstance(values, list):
            meta_info[key] = values[-1] if values else None
    if not meta_info.get(ENTROPY_TOKENS_KEY):
        meta_info.pop(ENTROPY_TOKENS_KEY, None)
    return None
