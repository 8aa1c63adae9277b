"""Generation control: pause and continue (SGLang's modes), abort by rid or all, flush_cache."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from ...httpguard import body_doc
from ..protocol import parse_abort, parse_pause_mode
from .deps import EngineDep, JsonBody

router = APIRouter()


@router.post("/pause_generation", openapi_extra=body_doc({"mode": {"type": "string"}}))
async def pause_generation(engine: EngineDep, body: JsonBody):
    mode = parse_pause_mode(body)
    sched = engine.scheduler
    await asyncio.wrap_future(sched.call(lambda: sched.pause(mode)))
    return {"success": True, "mode": mode}


@router.post("/continue_generation")
async def continue_generation(engine: EngineDep):
    await asyncio.wrap_future(engine.scheduler.call(engine.scheduler.resume))
    return {"success": True}


@router.post(
    "/abort_request",
    openapi_extra=body_doc({"rid": {"type": "string"}, "abort_all": {"type": "boolean"}}),
)
async def abort_request(engine: EngineDep, body: JsonBody):
    rid = parse_abort(body)  # None: every request
    sched = engine.scheduler
    n = await asyncio.wrap_future(sched.call(lambda: sched.abort(rid)))
    return {"success": True, "aborted": n}


@router.api_route("/flush_cache", methods=["GET", "POST"])  # slime calls it with GET
async def flush_cache():
    return {"success": True, "message": "no prefix cache to flush"}
