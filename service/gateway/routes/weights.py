"""``/v1/weights``: reload from disk, the trainer's weight-update group and distributed push, and
the versions every engine serves. All-or-nothing is the reload coordinator's job."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException

from ..deps import AdminAccess, ApiAccess, GatewayDep
from ..schemas import WeightGroupRequest, WeightPushRequest, WeightsRequest
from ..state import Gateway

router = APIRouter(tags=["weights"])


def _succeeded(gw: Gateway, started: float, result: dict) -> dict:
    """A reload that committed everywhere; a failed one is counted by the ReloadFailed handler."""
    gw.metrics.reloads.labels("success").inc()
    gw.metrics.reload_seconds.observe(time.monotonic() - started)
    return result


@router.post("/v1/weights", response_model=None)
async def update_weights(_: AdminAccess, gw: GatewayDep, req: WeightsRequest) -> dict:
    started = time.monotonic()
    try:  # the coordinator checks the path against the allowed roots before anything else
        result = await gw.reloads.reload(req.model_path, req.version, req.pause_mode, req.continue_aborted)
    except PermissionError as err:
        raise HTTPException(403, str(err)) from None
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    return _succeeded(gw, started, result)


@router.get("/v1/weights/group", response_model=None)
async def weight_group(_: AdminAccess, gw: GatewayDep) -> dict:
    """The layout a trainer needs before it joins: world size and each engine's rank offset."""
    await gw.pool.check_all()
    layout = await gw.reloads.group_layout()
    current = gw.reloads.group
    return {
        "world_size": layout.world_size,
        "ranks": layout.ranks,
        "group_name": current.name if current else None,
    }


@router.post("/v1/weights/group", response_model=None)
async def init_weight_group(_: AdminAccess, gw: GatewayDep, req: WeightGroupRequest) -> dict:
    """Every engine joins the trainer's group (blocks until the trainer has joined as rank 0)."""
    return await gw.reloads.init_group(
        req.master_address, req.master_port, req.world_size, req.group_name, req.backend
    )


@router.delete("/v1/weights/group", response_model=None)
async def leave_weight_group(_: AdminAccess, gw: GatewayDep) -> dict:
    """Every engine leaves the trainer's group (the SDK calls it when a push was refused early)."""
    return await gw.reloads.leave_group()


@router.post("/v1/weights/distributed", response_model=None)
async def push_weights(_: AdminAccess, gw: GatewayDep, req: WeightPushRequest) -> dict:
    """Stage the trainer's broadcast on every engine, then commit all or none."""
    manifest = {
        "names": req.names,
        "dtypes": req.dtypes,
        "shapes": req.shapes,
        "group_name": req.group_name,
    }
    started = time.monotonic()
    result = await gw.reloads.push(manifest, req.version, req.pause_mode, req.continue_aborted)
    return _succeeded(gw, started, result)


@router.get("/v1/weights", response_model=None)
async def weights(_: ApiAccess, gw: GatewayDep) -> dict:
    await gw.pool.check_all()
    return {
        "engines": {e.url: e.weight_version for e in gw.pool.engines.values()},
        "last_reload": gw.reloads.last,
    }
