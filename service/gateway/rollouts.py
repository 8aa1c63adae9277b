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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from bebop.service.gateway.pool import EnginePool, EngineState, NoEngineAvailable
from bebop.service.gateway.schemas import RolloutRequest, RolloutResult, SpecStats
from bebop.service.gateway.upstream import UpstreamError, UpstreamResponse

log = logging.getLogger(__name__)


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
        engine, r = await self._open(body, session_id, stream=False)
        engine.outstanding -= 1
        self.pool.record_success(engine)
        return r

    async def stream(self, body: dict[str, Any], session_id: str | None = None) -> AsyncIterator[bytes]:
        """SGLang's server-sent events from one engine, relayed as they come.

        Retries happen only before the first byte; an engine that fails mid-stream ends the stream
        with an explicit SSE error event rather than a silent cut.
        """
        engine, r = await self._open(body, session_id, stream=True)

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
                engine.outstanding -= 1
                r.close()

        return relay()

    async def _open(
        self, body: dict[str, Any], session_id: str | None, stream: bool
    ) -> tuple[EngineState, Any]:
        """The first engine that answers 2xx, with its response (streaming or read) and its
        ``outstanding`` count still raised: the caller lowers it when done. The response is an
        ``UpstreamStream`` when ``stream``, else an ``UpstreamResponse``."""
        tried: set[str] = set()
        last_error = "no engine tried"
        while True:
            try:
                engine = self.pool.select(session_id, exclude=tried)
            except NoEngineAvailable:
                raise NoEngineAvailable(f"no healthy engine could serve the request ({last_error})") from None
            tried.add(engine.url)
            engine.outstanding += 1
            url = engine.url + "/generate"
            try:
                if stream:
                    r = await self.pool.client.open_stream(url, body, self.timeout_s)
                    if r.status_code >= 400:
                        opened, r = r, await r.read()
                        opened.close()
                else:
                    r = await self.pool.client.post(url, body, self.timeout_s)
            except UpstreamError as err:  # nothing came back: safe to retry elsewhere (same seed)
                engine.outstanding -= 1
                self.pool.record_failure(engine)
                last_error = f"{engine.url}: {err}"
                continue
            if r.status_code < 400:
                return engine, r
            engine.outstanding -= 1
            if r.status_code in (429, 503):  # busy, not broken: try another engine
                last_error = f"{engine.url}: busy (HTTP {r.status_code})"
                continue
            if r.status_code >= 500:
                self.pool.record_failure(engine)
                last_error = f"{engine.url}: HTTP {r.status_code}"
                continue
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
        out = await self.forwarder.generate(body, session)
        spans = list(out["meta_info"].get("weight_version_spans") or [])
        output = list(out["output_ids"])
        logprobs = _logprobs(out) if req.return_logprobs else None
        # A reload that aborted this sample: continue it from its prefix on the new weights.
        while _aborted(out) and self.reloads.continue_aborted and "input_ids" in body and output is not None:
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
        return RolloutResult(
            prompt_index=i,
            sample_index=k,
            output_ids=output,
            output_logprobs=logprobs,
            finish_reason=meta.get("finish_reason"),
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
        jobs = self.plan(req)
        return list(await asyncio.gather(*(self.sample(req, i, k, b) for i, k, b in jobs)))

    async def stream(self, req: RolloutRequest) -> AsyncIterator[RolloutResult | Exception]:
        """Results as samples finish; a failed sample yields its exception (reported as an error line)."""
        tasks = [asyncio.create_task(self.sample(req, i, k, b)) for i, k, b in self.plan(req)]
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    yield await fut
                except (EngineRejected, NoEngineAvailable) as err:
                    yield err
        finally:
            for t in tasks:
                t.cancel()


def _aborted(out: dict[str, Any]) -> bool:
    reason = out.get("meta_info", {}).get("finish_reason") or {}
    return reason.get("type") == "abort"


def _logprobs(out: dict[str, Any]) -> list[float | None]:
    return [entry[0] for entry in out["meta_info"].get("output_token_logprobs") or []]
