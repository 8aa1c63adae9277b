"""``/generate``: SGLang's generation call, plain (one answer or a list) or streamed (SSE)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi import Request as HTTPRequest
from fastapi.responses import Response, StreamingResponse

from ...generate_doc import generate_doc
from ...httpguard import CLIENT_CLOSED, first_or_disconnect
from ..engine import Engine
from ..protocol import SSE_DONE, GenerateInput, failure, sse_event
from ..scheduler import Overloaded, Request, Scheduler
from .deps import EngineDep, JsonBody, error_response

router = APIRouter()


@router.post("/generate", openapi_extra=generate_doc())
async def generate(request: HTTPRequest, engine: EngineDep, body: JsonBody):
    job = engine.parse_generate(body)  # the whole body: one bad prompt and nothing is submitted
    reqs, queues = _track(engine, job)
    _submit_all(engine.scheduler, reqs)
    if job.stream:
        return StreamingResponse(
            _stream(engine, reqs[0], queues[0], job.return_logprob, job.return_entropy),
            media_type="text/event-stream",
        )
    finished = False
    try:
        finished, _ = await first_or_disconnect(_all_finished(queues), request.receive)
    finally:
        if not finished:  # the client went away (or the server stops): free the slots
            for req in reqs:
                engine.scheduler.cancel(req, "client disconnected")
    if not finished:
        return Response(status_code=CLIENT_CLOSED)
    failed = [f for f in map(failure, reqs) if f is not None]
    if failed:
        return error_response(500, failed[0]["message"])
    results = [engine.response(r, job.return_logprob, job.return_entropy) for r in reqs]
    return results if job.batch else results[0]


def _track(engine: Engine, job: GenerateInput) -> tuple[list[Request], list[asyncio.Queue]]:
    """One scheduler request per prompt, each with a queue that gets ``finished`` (a bool) after
    every step that touched it; the scheduler's thread hands events to this loop."""
    loop = asyncio.get_running_loop()
    reqs: list[Request] = []
    queues: list[asyncio.Queue] = []
    for prompt, rid in zip(job.prompts, job.rids, strict=True):
        q: asyncio.Queue = asyncio.Queue()

        def on_event(req: Request, finished: bool, q: asyncio.Queue = q) -> None:
            if finished:
                engine.metrics.observe_finished(req)
            loop.call_soon_threadsafe(q.put_nowait, finished)

        reqs.append(engine.new_request(prompt, rid, job.params, on_event))
        queues.append(q)
    return reqs, queues


def _submit_all(sched: Scheduler, reqs: list[Request]) -> None:
    """Queue every request or none: on a full queue the ones already queued are cancelled and
    ``Overloaded`` propagates (a 503 with retry_after)."""
    submitted: list[Request] = []
    try:
        for req in reqs:
            sched.submit(req)
            submitted.append(req)
    except Overloaded:
        for req in submitted:  # these objects only: another client may use the same rid
            sched.cancel(req, "queue full")
        raise


async def _all_finished(queues: list[asyncio.Queue]) -> None:
    for q in queues:
        while not await q.get():
            pass


async def _stream(
    engine: Engine, req: Request, q: asyncio.Queue, return_logprob: bool, return_entropy: bool
) -> AsyncIterator[str]:
    """SGLang's SSE stream: one ``data:`` chunk per step (cumulative output), then ``data: [DONE]``;
    a request that failed in the engine ends with an ``error`` event. A client that goes away
    (Starlette cancels the stream, or closes it) aborts the request."""
    try:
        finished = False
        while not finished:
            finished = await q.get()
            while not q.empty():  # steps that came while the last chunk was sent: one chunk for all
                finished = finished or q.get_nowait()
            error = failure(req)
            if error is not None:
                yield sse_event({"error": error})
                break
            yield sse_event(engine.response(req, return_logprob, return_entropy))
        yield SSE_DONE
    finally:
        if not req.finished:
            engine.scheduler.cancel(req, "client disconnected")
