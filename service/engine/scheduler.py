"""Continuous batching: one loop thread admits, steps and finishes requests between model steps.

Requests wait in a bounded queue, join the running batch when a KV slot is free (prefill), take
one (speculative) step together with every other running request, and leave as soon as they
finish. Control operations (pause, resume, abort, weight swaps) run on the loop thread between
two steps, so a step never sees half-updated weights.

Every accepted request ends with exactly one final event: finished, aborted, or an error.
A failure while admitting or stepping ends exactly the requests it concerns (``finish_reason``
``{"type": "abort", "message": "engine error: ...", "status_code": 500}``) and the engine keeps
serving everyone else: a prefill failure concerns the request being admitted; a batched step that
raises cannot say which row caused it, so every row is rebuilt from its own tokens (as a retract
does, which keeps the counter-RNG stream) and stepped alone once, and only the rows that fail alone
are ended.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from .runner import ModelRunner, SeqState, StepOutput
from .sampling import SamplingParams

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The waiting queue is full; the server answers 503 with Retry-After."""


@dataclass(eq=False)  # identity: queue look-ups must not compare token lists (or release the GIL)
class Request:
    """One generation request and everything it has produced so far."""

    rid: str
    prompt: list[int]
    params: SamplingParams
    seed: int
    on_event: Callable[[Request, bool], None]  # (request, finished): called on the loop thread
    output: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    version_spans: list[list[Any]] = field(default_factory=list)  # [start, end, weight_version]
    finish_reason: dict[str, Any] | None = None
    verify_ct: int = 0
    drafts_proposed: int = 0
    drafts_accepted: int = 0
    position_reached: list[int] = field(default_factory=list)  # per draft position
    position_accepted: list[int] = field(default_factory=list)
    accept_histogram: list[int] = field(default_factory=list)  # verify steps by accepted drafts
    created: float = field(default_factory=time.monotonic)
    state: SeqState | None = None
    # the stop string the output's text now ends in, checked after each token (None: no stop strings)
    stop_check: Callable[[list[int]], str | None] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Scheduler:
    """The engine loop. Thread-safe entry points: ``submit``, ``call`` (run a function between steps)."""

    def __init__(
        self,
        runner: ModelRunner,
        eos_token_id: int | None,
        max_queue: int = 256,
        weight_version: str = "default",
    ):
        self.runner = runner
        self.eos = eos_token_id
        self.max_queue = max_queue
        self.weight_version = weight_version
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self.paused_mode: str | None = None
        self._commands: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._wake = threading.Condition()
        self._stop = False
        self.stats = collections.Counter()
        self.on_tokens: Callable[[int], None] | None = None  # called on the loop thread per step
        self._thread = threading.Thread(target=self._loop, name="bebop-engine", daemon=True)

    # ------------------------------------------------------------------ thread-safe API
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout=10)

    def submit(self, req: Request) -> None:
        with self._wake:
            if len(self.waiting) >= self.max_queue:
                raise Overloaded(f"the engine queue is full ({self.max_queue} waiting requests); retry later")
            self.waiting.append(req)
            self._wake.notify_all()

    def cancel(self, req: Request, message: str) -> None:
        """End this request object (not every request sharing its rid) between two steps."""
        self.call(lambda: self._finish(req, {"type": "abort", "message": message}))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the loop thread between two steps; the future holds its result."""
        fut: Future = Future()
        with self._wake:
            self._commands.append((fn, fut))
            self._wake.notify_all()
        return fut

    # ------------------------------------------------------------------ control (loop thread)
    def pause(self, mode: str) -> None:
        if mode not in ("abort", "retract", "in_place"):
            raise ValueError(f"mode must be abort, retract or in_place, got {mode!r}")
        if mode == "abort":
            self.abort(None, "paused with mode abort")
        elif mode == "retract":
            for req in reversed(self.running):  # back to the front of the queue, in order
                self._free(req)
                with self._wake:
                    self.waiting.appendleft(req)
            self.running = []
        self.paused_mode = mode

    def resume(self) -> None:
        self.paused_mode = None

    def abort(self, rid: str | None, message: str = "aborted") -> int:
        """Abort one request (by rid) or all (rid None); returns how many were aborted."""
        victims = [r for r in [*self.running, *self._waiting_now()] if rid is None or r.rid == rid]
        for req in victims:
            self._finish(req, {"type": "abort", "message": message})
        return len(victims)

    def _waiting_now(self) -> list[Request]:
        """A copy of the queue: HTTP threads append to it under ``_wake`` while the loop iterates."""
        with self._wake:
            return list(self.waiting)

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stop or self._commands or self._has_work()):
                    self._wake.wait(timeout=0.5)
                if self._stop:
                    break
                commands = list(self._commands)
                self._commands.clear()
            for fn, fut in commands:
                try:
                    fut.set_result(fn())
                except Exception as err:  # reported to the caller, never kills the loop
                    fut.set_exception(err)
            if self.paused_mode is None:
                try:
                    self._admit()
                    self._step()
                except Exception as err:  # a bug outside one request: fail what is running, loudly
                    log.exception("engine loop failed")
                    for req in [*self.running]:
                        self._finish(req, _engine_error(err))
        for req in [*self.running, *self._waiting_now()]:
            self._finish(req, {"type": "abort", "message": "engine shutting down"})

    def _has_work(self) -> bool:
        return self.paused_mode is None and bool(self.running or self.waiting)

    def _admit(self) -> None:
        """Move waiting requests into free slots. Fresh requests are prefilled together, a group per
        forward (``prefill_groups``): a GRPO group's n samples of one prompt, or requests that
        arrived together with prompts of similar lengths."""
        admitted: list[Request] = []
        while self.waiting and len(admitted) < self.runner.free_slots():
            with self._wake:
                req = self.waiting.popleft()
            if req.finished:
                continue
            if req.params.max_new_tokens - len(req.output) <= 0:
                self._finish(req, {"type": "length", "length": len(req.output)})
                continue
            admitted.append(req)
        fresh = []
        for req in admitted:
            if req.output:  # resumed: prefilled alone, with its pending token kept
                self._admit_one(req)
            else:
                fresh.append(req)
        for group in prefill_groups(fresh):
            if len(group) == 1:
                self._admit_one(group[0])
                continue
            try:
                pairs = self.runner.prefill_group(
                    [r.prompt for r in group], [r.params for r in group], [r.seed for r in group]
                )
            except Exception:  # find the request that fails on its own; the others go on
                log.exception("group prefill of %d requests failed; prefilling each alone", len(group))
                for req in group:
                    self._admit_one(req)
                continue
            for req, (state, out) in zip(group, pairs, strict=True):
                req.state = state
                self.running.append(req)
                self._record(req, out)

    def _admit_one(self, req: Request) -> None:
        try:
            out = self._prefill(req)
        except Exception as err:  # this request only: it is off the queue, so end it here
            log.exception("prefill of request %s failed", req.rid)
            self._finish(req, _engine_error(err))
            return
        self.running.append(req)
        if out is not None:
            self._record(req, out)

    def _prefill(self, req: Request) -> StepOutput | None:
        """Give ``req`` a slot and its runner state; the first token's output, or None when it
        resumes (retracted, or rebuilt after a failed step) with its last token pending."""
        if req.output:  # resume exactly where it left: the same positions draw the same numbers
            context, resume = req.prompt + req.output[:-1], req.output[-1]
            params = req.params  # the runner counts output tokens from the pending one
            if params.min_new_tokens:
                params = replace(params, min_new_tokens=max(0, params.min_new_tokens - len(req.output) + 1))
            req.state, _ = self.runner.prefill(
                context, params, req.seed, resume_token=resume, history=req.output[:-1]
            )
            return None
        req.state, out = self.runner.prefill(req.prompt, req.params, req.seed)
        return out

    def _step(self) -> None:
        if not self.running:
            return
        batch = list(self.running)
        try:
            outputs = self.runner.step([r.state for r in batch])
        except Exception as err:
            log.exception("a step of %d requests failed; stepping each alone", len(batch))
            self._isolate(batch, err)
            return
        for req, out in zip(batch, outputs, strict=True):
            req.verify_ct += 1
            self._record(req, out)

    def _isolate(self, batch: list[Request], err: Exception) -> None:
        """After a failed batched step, whose state may be half updated: rebuild every row from its
        own tokens and step it alone (the runner steps every sequence it holds, so each row is the
        only one in it while it steps); a row that fails alone ends with an error, the rest go on
        and are rebuilt once more to run together again."""
        for req in batch:
            self._free(req)
        self.running = [r for r in self.running if r not in batch]
        for req in self.running:  # rows outside the batch (none in practice) wait on the queue
            self._free(req)
        survivors = [*self.running]
        self.running = []
        for req in batch:
            try:
                self._prefill(req)
                (out,) = self.runner.step([req.state])
            except Exception as alone:
                log.exception("request %s fails on its own", req.rid)
                self._free(req)
                self._finish(req, _engine_error(alone))
                continue
            self._free(req)
            req.verify_ct += 1
            self._record(req, out)
            if not req.finished:
                survivors.append(req)
        with self._wake:
            for req in reversed(survivors):
                self.waiting.appendleft(req)  # resumed from their tokens at the next admission

    def _record(self, req: Request, out: StepOutput) -> None:
        """Append a step's tokens up to the first stop condition, then notify or finish."""
        if out.drafts_proposed:
            req.drafts_proposed += out.drafts_proposed
            req.drafts_accepted += out.drafts_accepted
            G = out.drafts_proposed
            if not req.position_reached:
                req.position_reached, req.position_accepted = [0] * G, [0] * G
            for k in range(min(out.drafts_accepted + 1, G)):
                req.position_reached[k] += 1
                req.position_accepted[k] += int(k < out.drafts_accepted)
            hist = req.accept_histogram
            hist.extend([0] * (out.drafts_accepted + 1 - len(hist)))
            hist[out.drafts_accepted] += 1
        start = len(req.output)
        reason = None
        for tok, lp, ent in zip(out.tokens, out.logprobs, out.entropies, strict=True):
            req.output.append(tok)
            req.logprobs.append(lp)
            req.entropies.append(ent)
            if req.stop_check is not None and (matched := req.stop_check(req.output)) is not None:
                reason = {"type": "stop", "matched": matched}
                break
            if (tok == self.eos and not req.params.ignore_eos) or tok in req.params.stop_token_ids:
                reason = {"type": "stop", "matched": tok}
                break
            if len(req.output) >= req.params.max_new_tokens:
                reason = {"type": "length", "length": len(req.output)}
                break
        self._add_span(req, start, len(req.output))
        self.stats["generated_tokens"] += len(req.output) - start
        if self.on_tokens is not None:
            self.on_tokens(len(req.output) - start)
        if reason is not None:
            self._finish(req, reason)
        else:
            self._notify(req, False)

    def _notify(self, req: Request, finished: bool) -> None:
        try:
            req.on_event(req, finished)
        except Exception:  # a listener that went away (closed event loop) must not stop the loop
            log.exception("event listener of request %s failed", req.rid)

    def _add_span(self, req: Request, start: int, end: int) -> None:
        if end <= start:
            return
        if (
            req.version_spans
            and req.version_spans[-1][2] == self.weight_version
            and req.version_spans[-1][1] == start
        ):
            req.version_spans[-1][1] = end
        else:
            req.version_spans.append([start, end, self.weight_version])

    def _free(self, req: Request) -> None:
        if req.state is not None:
            self.runner.release(req.state)
            req.state = None

    def _finish(self, req: Request, reason: dict[str, Any]) -> None:
        if req.finished:
            return
        req.finish_reason = reason
        self._free(req)
        if req in self.running:
            self.running.remove(req)
        with self._wake:  # HTTP threads append to the queue meanwhile
            if req in self.waiting:
                self.waiting.remove(req)
        self.stats["finished_" + reason["type"]] += 1
        self._notify(req, True)


def _engine_error(err: Exception) -> dict[str, Any]:
    """The final event of a request that failed inside the engine (a 500, not the client's fault)."""
    return {"type": "abort", "message": f"engine error: {type(err).__name__}: {err}", "status_code": 500}


T = TypeVar("T")

# A group's prompts are right-padded to its longest; padding may at most double the tokens a
# prefill computes (a long prompt beside short ones is prefilled apart from them), and a group's
# padded tokens are bounded, which bounds the forward's activations.
MAX_PADDED_RATIO = 2.0
MAX_GROUP_TOKENS = 16384


def prefill_groups(items: list[T], length: Callable[[T], int] = lambda req: len(req.prompt)) -> list[list[T]]:
    """Split fresh requests (or anything with a prompt ``length``) into prefill groups, shortest
    prompts first: each group's padded size (count x longest prompt) is at most
    ``MAX_PADDED_RATIO`` times its real prompt tokens and at most ``MAX_GROUP_TOKENS`` (a single
    longer prompt is a group of its own)."""
    groups: list[list[T]] = []
    real = 0
    for item in sorted(items, key=length):
        n = length(item)  # the longest so far, as they are sorted
        padded = (len(groups[-1]) + 1) * n if groups else 0
        if groups and padded <= MAX_PADDED_RATIO * (real + n) and padded <= MAX_GROUP_TOKENS:
            groups[-1].append(item)
            real += n
        else:
            groups.append([item])
            real = n
    return groups
