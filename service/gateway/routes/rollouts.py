"""``POST /v1/rollouts``: GRPO groups, answered whole or streamed as NDJSON, one line per sample."""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ...httpguard import CLIENT_CLOSED, first_or_disconnect
from ..deps import ApiAccess, GatewayDep
from ..inflight import Ticket
from ..schemas import RolloutRequest, RolloutResponse
from ..state import Gateway

log = logging.getLogger(__name__)

router = APIRouter(tags=["rollouts"])


@router.post("/v1/rollouts", response_model=RolloutResponse)
async def rollouts(_: ApiAccess, gw: GatewayDep, req: RolloutRequest, request: Request) -> Response:
    ticket = gw.admission.admit(sum(p.n for p in req.prompts))  # Overloaded: 429 + Retry-After
    if req.stream:
        lines = _ndjson(gw, req, ticket)
        weakref.finalize(lines, ticket.release)  # a client gone before the first line: never started
        return StreamingResponse(lines, media_type="application/x-ndjson")
    with ticket:  # a client that goes away cancels its samples (and their engine calls)
        done, results = await first_or_disconnect(gw.rollouts.run(req), request.receive)
    if not done:
        return Response(status_code=CLIENT_CLOSED)
    for r in results:
        gw.metrics.observe(r, req.task)
    # Serialized once here: returning the model would have FastAPI validate it all over again.
    return Response(RolloutResponse(results=results).model_dump_json(), media_type="application/json")


async def _ndjson(gw: Gateway, req: RolloutRequest, ticket: Ticket) -> AsyncIterator[str]:
    """One JSON line per finished sample, as samples finish; a failed sample gets an error line,
    and so does a failure of the stream itself, so a stream never ends silently short."""
    try:
        async for item in gw.rollouts.stream(req):
            if isinstance(item, Exception):
                yield json.dumps({"error": str(item)}) + "\n"
            else:
                gw.metrics.observe(item, req.task)
                yield item.model_dump_json() + "\n"
    except Exception as err:
        log.exception("a rollout stream failed")
        yield json.dumps({"error": f"the rollout stream failed: {type(err).__name__}: {err}"}) + "\n"
    finally:
        ticket.release()
