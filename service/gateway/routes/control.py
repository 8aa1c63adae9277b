"""SGLang-shaped control calls fanned out to every healthy engine: pause, resume (SGLang's
``/continue_generation``) and abort. Reloads pause and resume on their own; these are for trainers
that drive the engines between steps."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from ..deps import AdminAccess, GatewayDep
from ..schemas import PauseRequest
from ..state import Gateway

router = APIRouter(tags=["control"])


async def fan_out(gw: Gateway, path: str, body: dict) -> dict:
    """Each healthy engine's answer to ``path``, by url; 503 when there is none (a pause that
    reached no engine must not read as done). The SGLang-shaped routes use it too."""
    urls = [e.url for e in gw.pool.healthy()]
    if not urls:
        raise HTTPException(503, "no healthy engine")
    return await gw.reloads.post_all(path, body, urls)


@router.post("/v1/pause", response_model=None)
async def pause(_: AdminAccess, gw: GatewayDep, req: PauseRequest) -> dict:
    return {"engines": await fan_out(gw, "/pause_generation", {"mode": req.mode})}


@router.post("/v1/resume", response_model=None)
async def resume(_: AdminAccess, gw: GatewayDep) -> dict:
    return {"engines": await fan_out(gw, "/continue_generation", {})}


@router.post("/v1/abort", response_model=None)
async def abort(_: AdminAccess, gw: GatewayDep) -> dict:
    gw.reloads.abort_all()  # what is aborted now stays aborted, whatever the last reload said
    return {"engines": await fan_out(gw, "/abort_request", {"abort_all": True})}
