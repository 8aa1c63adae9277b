"""Rollouts: GRPO groups fanned out to engines, retried on engine failure, never silently dropped.

Sample k of a prompt is one engine ``/generate`` call with ``sampling_seed = seed + k``, so the
same request gives the same rollouts, and a retry on another engine (only when nothing came back)
gives the same tokens. A sample cut by a reload with ``continue_aborted`` is continued from its
prefix on the new weights; its ``weight_version_spans`` then record which tokens came from which.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .inflight import Ticket, hold
from .pool import EnginePool, EngineState, NoEngineAvailable
from .schemas import RolloutRequest, RolloutResult, SpecStats
from .upstream import UpstreamError, UpstreamResponse

log = logging.getLogger(__name__)
BUSY_RETRY_FIRST_S = 0.05  # every engine answered busy: wait, then try again, doubling up to
BUSY_RETRY_MAX_S = 1.0  # this, until the request timeout: admitted work waits, it is not bounced


class EngineRejected(Exception):
    """An engine answered 4xx: the request itself is bad; the gateway answers 400 with the message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Forwarder:
    """Sends one SGLang ``/generate`` body to an engine, retrying on another when one fails."""

    pool: EnginePool
    timeout_s: float

    async def generate(self, body: dict[str, Any], session_id: str | None = None) -> dict[str, Any]:
        return (await self.generate_response(body, session_id)).json()

    async def generate_response(
        self, body: dict[str, Any], session_id: str | None = None
    ) -> UpstreamResponse:
        """The engine's answer, unparsed: the pass-through relays its bytes as they are."""
        engine, held, r = await self._open(body, session_id, stream=False)
        held.release()  # no await between the answer and here: nothing can leak
        self.pool.record_success(engine)
        return r

    async def stream(self, body: dict[str, Any], session_id: str | None = None) -> AsyncIterator[bytes]:
        """SGLang's server-sent events from one engine, relayed as they come.

        Retries happen only before the first byte; an engine that fails mid-stream ends the stream
        with an explicit SSE error event rather than a silent cut.
        """
        engine, held, r = await self._open(body, session_id, stream=True)

        def settle() -> None:
            held.release()
            r.close()

        done = Ticket(settle)  # the relay's end and the finalizer below may both get here

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in r.chunks():
                    yield chunk
                self.pool.record_success(engine)
            except UpstreamError as err:
                self.pool.record_failure(engine)
                message = f"engine {engine.url} failed mid-stream: {err}"
                yield f"data: {json.dumps({'error': {'message': message, 'code': 502}})}\n\n".encode()
            finally:
                done.release()

        stream = relay()
        # a client that leaves before the first chunk leaves the generator unstarted: its finally
        # never runs, so the count and the engine connection are released when it is collected
        weakref.finalize(stream, done.release)
        return stream

    async def _open(
        self, body: dict[str, Any], session_id: str | None, stream: bool
    ) -> tuple[EngineState, Ticket, Any]:
        """The first engine that answers 2xx, with its ``outstanding`` ticket still held (the caller
        releases it when done) and its response: an ``UpstreamStream`` when ``stream``, else an
        ``UpstreamResponse``."""
        failed: set[str] = set()  # engines that broke: not tried again for this request
        busy: set[str] = set()  # engines that answered 429/503: tried again after a pause
        last_error = "no engine tried"
        deadline = time.monotonic() + self.timeout_s
        pause = BUSY_RETRY_FIRST_S
        while True:
            try:
                engine = self.pool.select(session_id, exclude=failed | busy)
            except NoEngineAvailable:
                if busy and time.monotonic() + pause < deadline:
                    await asyncio.sleep(pause)
                    pause, busy = min(2 * pause, BUSY_RETRY_MAX_S), set()
                    continue
                raise NoEngineAvailable(f"no healthy engine could serve the request ({last_error})") from None
            held = hold(engine)
            url = engine.url + "/generate"
            r: Any = None
            handed_over = False
            try:
                if stream:
                    r = await self.pool.client.open_stream(url, body, self.timeout_s)
                    if r.status_code >= 400:
                        opened, r = r, None
                        try:
                            r = await opened.read()
                        finally:
                            opened.close()
                else:
                    r = await self.pool.client.post(url, body, self.timeout_s)
                if r.status_code < 400:
                    handed_over = True
                    return engine, held, r
            except UpstreamError as err:  # nothing came back: safe to retry elsewhere (same seed)
                self.pool.record_failure(engine)
                failed.add(engine.url)
                last_error = f"{engine.url}: {err}"
                continue
            finally:  # also when the caller is cancelled mid-call: the count must come back down
                if not handed_over:
                    held.release()
                    if hasattr(r, "close"):
                        r.close()
            if r.status_code in (429, 503):  # busy, not broken: try another engine, then wait
                busy.add(engine.url)
                last_error = f"{engine.url}: busy (HTTP {r.status_code})"
                continue
            if r.status_code >= 500:
                self.pool.record_failure(engine)
                failed.add(engine.url)
                last_error = f"{engine.url}: HTTP {r.status_code}"
                continue
            # a 4xx is the request's fault, never the engine's: the breaker does not count it
            raise EngineRejected(r.status_code, _message(r))


def _message(r: UpstreamResponse) -> str:
    try:
        data = r.json()
        return str(data.get("error", {}).get("message") or data.get("message") or data)
    except ValueError:
        return r.text[:500]


class RolloutService:
    def __init__(self, forwarder: Forwarder, reloads: Any):
        self.forwarder = forwarder
        self.reloads = reloads  # the ReloadCoordinator: continue_aborted needs to wait for it

    def plan(self, req: RolloutRequest) -> list[tuple[int, int, dict[str, Any]]]:
        """(prompt_index, sample_index, engine body) for every sample."""
        base = req.seed if req.seed is not None else random.getrandbits(62)
        params = req.sampling_params.model_dump()
        jobs = []
        for i, prompt in enumerate(req.prompts):
            for k in range(prompt.n):
                body: dict[str, Any] = {
                    "sampling_params": {**params, "sampling_seed": base + k},
                    "return_logprob": req.return_logprobs,
                }
                if prompt.input_ids is not None:
                    body["input_ids"] = prompt.input_ids
                else:
                    body["text"] = prompt.text
                jobs.append((i, k, body))
        return jobs

    async def sample(self, req: RolloutRequest, i: int, k: int, body: dict[str, Any]) -> RolloutResult:
        session = req.prompts[i].session_id
        started = time.monotonic()
        out = await self.forwarder.generate(body, session)
        spans = list(out["meta_info"].get("weight_version_spans") or [])
        output = list(out["output_ids"])
        logprobs = _logprobs(out) if req.return_logprobs else None
        # A reload that aborted this sample: continue it from its prefix on the new weights.
        while _aborted(out) and self.reloads.continues(started) and "input_ids" in body:
            await self.reloads.wait_idle()
            remaining = body["sampling_params"]["max_new_tokens"] - len(output)
            if remaining <= 0:
                break
            more = {
                **body,
                "input_ids": body["input_ids"] + output,
                "sampling_params": {**body["sampling_params"], "max_new_tokens": remaining},
            }
            out = await self.forwarder.generate(more, session)
            offset = len(output)
            spans += [
                [a + offset, b + offset, v] for a, b, v in out["meta_info"].get("weight_version_spans") or []
            ]
            output += out["output_ids"]
            if logprobs is not None:
                logprobs += _logprobs(out)
        meta = out["meta_info"]
        finish = meta.get("finish_reason")
        limit = body["sampling_params"]["max_new_tokens"]
        if (finish or {}).get("type") == "length" or len(output) >= limit:
            finish = {"type": "length", "length": len(output)}  # the whole sample, not its last piece
        return RolloutResult(
            prompt_index=i,
            sample_index=k,
            output_ids=output,
            output_logprobs=logprobs,
            finish_reason=finish,
            weight_version=meta.get("weight_version"),
            weight_version_spans=spans,
            spec=SpecStats(
                accept_length=meta.get("spec_accept_length"),
                accept_rate=meta.get("spec_accept_rate"),
                accept_per_position=meta.get("spec_accept_per_position") or [],
            ),
            entropy_mean=meta.get("entropy_mean"),
            text=out.get("text"),
        )

    async def run(self, req: RolloutRequest) -> list[RolloutResult]:
        """Every sample, or the first failure, with its siblings cancelled (their engine calls are
        closed, so the engines abort them) before this returns: nothing runs on uncounted."""
        tasks = [asyncio.ensure_future(self.sample(req, i, k, b)) for i, k, b in self.plan(req)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            await _cancel_all(tasks)

    async def stream(self, req: RolloutRequest) -> AsyncIterator[RolloutResult | Exception]:
        """Results as samples finish; a failed sample yields its exception (reported as an error line)."""
        tasks = [asyncio.ensure_future(self.sample(req, i, k, b)) for i, k, b in self.plan(req)]
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    yield await fut
                except Exception as err:  # any failure is that sample's error line, not a cut stream
                    if not isinstance(err, (EngineRejected, NoEngineAvailable)):
                        log.exception("a streamed sample failed")
                    yield err
        finally:
            await _cancel_all(tasks)


async def _cancel_all(tasks: list[asyncio.Future]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _aborted(out: dict[str, Any]) -> bool:
    reason = out.get("meta_info", {}).get("finish_reason") or {}
    return reason.get("type") == "abort"


def _logprobs(out: dict[str, Any]) -> list[float | None]:
    return [entry[0] for entry in out["meta_info"].get("output_token_logprobs") or []]
