"""``/v1/engines``: list the pool, add an engine at run time, remove one."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from ..deps import AdminAccess, GatewayDep
from ..schemas import EngineRequest

router = APIRouter(tags=["engines"])


@router.get("/v1/engines", response_model=None)
async def engines(_: AdminAccess, gw: GatewayDep) -> dict:
    return {"engines": [e.as_dict() for e in gw.pool.engines.values()]}


@router.post("/v1/engines", response_model=None)
async def add_engine(_: AdminAccess, gw: GatewayDep, req: EngineRequest) -> dict:
    try:
        engine = gw.pool.add(req.url)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    await gw.pool.check(engine)  # answers with its health at once, not at the next poll
    return engine.as_dict()


@router.delete("/v1/engines", response_model=None)
async def remove_engine(_: AdminAccess, gw: GatewayDep, req: EngineRequest) -> dict:
    if not gw.pool.remove(req.url):
        raise HTTPException(404, f"no engine {req.url}")
    return {"removed": req.url}
