"""Weight routes: updates from disk and from a trainer's broadcast, staging, the update group,
SGLang 0.5.23's update session, and the weight version. The work is ``WeightUpdater``'s."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ...httpguard import body_doc
from ..protocol import (
    parse_abort_all,
    parse_disk_update,
    parse_distributed_update,
    parse_group_join,
    parse_group_name,
    parse_new_version,
    parse_selector,
    parse_stage_id,
)
from ..sampling import BadRequest
from ..weight_receiver import LEFT_GROUP
from .deps import JsonBody, OptionalJsonBody, WeightsDep, error_response

# An update the engine refuses is a 400; committing with nothing staged, or rolling back with nothing
# retained, is a conflict (409).
REFUSED, NOTHING_STAGED = 400, 409

router = APIRouter()


@router.post(
    "/update_weights_from_disk",
    openapi_extra=body_doc(
        {
            "model_path": {"type": "string"},
            "weight_version": {"type": "string"},
            "abort_all_requests": {"type": "boolean"},
            "stage": {"type": "boolean"},
        }
    ),
)
async def update_weights_from_disk(weights: WeightsDep, body: JsonBody):
    result = await weights.off_loop(weights.update_from_disk, parse_disk_update(body))
    return JSONResponse(result, status_code=200 if result["success"] else REFUSED)


@router.post("/commit_staged_weights")
async def commit_staged_weights(weights: WeightsDep, body: JsonBody):
    result = await weights.off_loop(weights.commit_staged, parse_abort_all(body), parse_stage_id(body))
    return JSONResponse(result, status_code=200 if result["success"] else NOTHING_STAGED)


@router.post("/rollback_weights")
async def rollback_weights(weights: WeightsDep, body: OptionalJsonBody):
    """Bebop's extension: back to the weights the last commit replaced, kept since in host memory."""
    result = await weights.off_loop(weights.roll_back, parse_abort_all(body), parse_stage_id(body))
    return JSONResponse(result, status_code=200 if result["success"] else NOTHING_STAGED)


@router.post("/settle_weights")
async def settle_weights(weights: WeightsDep, body: OptionalJsonBody):
    """Bebop's extension: the reload is settled, the kept copy of the old weights is released."""
    return await weights.off_loop(weights.settle, parse_stage_id(body))


@router.post("/discard_staged_weights")
async def discard_staged_weights(weights: WeightsDep, body: OptionalJsonBody):
    return await weights.off_loop(weights.discard_staged, parse_stage_id(body))


@router.post("/init_weights_update_group")
async def init_weights_update_group(weights: WeightsDep, body: JsonBody):
    join = parse_group_join(body)
    try:
        await weights.off_loop(weights.join_group, join)
    except (ValueError, RuntimeError) as err:
        return error_response(400, f"cannot join the weight update group: {err}", success=False)
    return {"success": True, "message": "joined the weight update group"}


@router.post("/update_weights_from_distributed")
async def update_weights_from_distributed(weights: WeightsDep, body: JsonBody):
    try:
        update = parse_distributed_update(body, weights.largest_numel)  # before any buffer is allocated
    except BadRequest as err:
        # The trainer and the other engines may be inside the broadcast already: leave the group
        # so that they fail now rather than at the group timeout (see WeightReceiver.leave_if_member).
        if await weights.off_loop(weights.receiver.leave_if_member, body.get("group_name")):
            raise BadRequest(f"{err}{LEFT_GROUP}") from None
        raise
    result = await weights.off_loop(weights.update_from_distributed, update)
    return JSONResponse(result, status_code=200 if result["success"] else REFUSED)


@router.post("/begin_weight_update", openapi_extra=body_doc({"selector": {"type": "string"}}))
async def begin_weight_update(weights: WeightsDep, body: JsonBody):
    """SGLang 0.5.23's session around distributed/tensor updates (``selector``: which runners;
    here the target and its MTP head are one state dict, so every selector reaches both)."""
    selector = parse_selector(body)
    if not weights.open_session(selector):
        return error_response(
            400, "a weight-update session is already open; call end_weight_update() first", success=False
        )
    return {"success": True, "message": f"weight-update session open (selector {selector})"}


@router.post("/end_weight_update")
async def end_weight_update(weights: WeightsDep):
    if not weights.close_session():
        return error_response(
            400, "no weight-update session is open; call begin_weight_update() first", success=False
        )
    return {"success": True, "message": "weight-update session closed"}


@router.get("/get_weight_version")  # slime's name; SGLang 0.5.23 answers it in /model_info too
async def get_weight_version(weights: WeightsDep):
    return {"weight_version": weights.version}


@router.post(
    "/update_weight_version",
    openapi_extra=body_doc({"new_version": {"type": "string"}, "abort_all_requests": {"type": "boolean"}}),
)
async def update_weight_version(weights: WeightsDep, body: JsonBody):
    version = parse_new_version(body)
    await asyncio.wrap_future(weights.set_version(version, parse_abort_all(body, default=True)))
    return {"success": True, "message": f"Weight version updated to {version}", "new_version": version}


@router.post("/destroy_weights_update_group", openapi_extra=body_doc({"group_name": {"type": "string"}}))
async def destroy_weights_update_group(weights: WeightsDep, body: JsonBody):
    name = parse_group_name(body)
    try:
        await weights.off_loop(weights.leave_group, name)
    except ValueError as err:
        return error_response(400, str(err), success=False)
    return {"success": True, "message": f"left the weight update group {name}"}


@router.post("/update_weights_from_tensor")
async def update_weights_from_tensor():
    return error_response(
        400,
        "update_weights_from_tensor is not supported by the embedded engine: its tensors are CUDA IPC "
        "handles of a trainer in the same process group; use /update_weights_from_disk or "
        "/update_weights_from_distributed",
        success=False,
    )
