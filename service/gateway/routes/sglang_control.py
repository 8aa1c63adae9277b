"""SGLang 0.5.23's control endpoints on the gateway, for trainers (slime, AReaL) configured with the
gateway's address as if it were one SGLang server.

Each maps onto what the gateway already does for all its engines at once:

- ``/update_weights_from_disk``: the reload coordinator's all-or-nothing reload (pause ``abort`` when
  ``abort_all_requests``, else ``retract``, whose requests resume under the new weights); SGLang's
  answer ``{"success", "message"}``, 400 on failure. Without ``weight_version`` the version stays what
  the engines serve, as in SGLang.
- ``/pause_generation``, ``/continue_generation``, ``/abort_request``, ``/flush_cache``: fanned out to
  every healthy engine.
- ``/get_weight_version``: the one version every healthy engine serves (409 while they differ).
- ``/health``, ``/health_generate``: some engine is healthy / some engine generates one token.

The distributed and tensor paths are refused with a 400 that says what to do instead: behind the
gateway every engine is its own rank, so a group a trainer sizes for one server cannot hold them
(``/v1/weights/group`` hands out the layout; SGLang's calls work sent to each engine directly).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse

from ...httpguard import body_doc
from ..deps import AdminAccess, ApiAccess, GatewayDep, JsonObject, OptionalJsonObject
from ..pool import NoEngineAvailable
from ..reload import ReloadFailed
from ..rollouts import EngineRejected
from ..state import Gateway
from .control import fan_out

router = APIRouter(tags=["sglang control"])

PAUSE_MODES = ("abort", "retract", "in_place")  # SGLang 0.5.23's /pause_generation modes
HEALTH_GENERATE_BODY = {"input_ids": [0], "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
MAX_VERSION_CHARS = 128  # as /v1/weights
PER_ENGINE_ROUTES = (
    "/init_weights_update_group",
    "/update_weights_from_distributed",
    "/destroy_weights_update_group",
    "/update_weights_from_tensor",
    "/begin_weight_update",
    "/end_weight_update",
)


def _failure(status: int, message: str, **extra: Any) -> JSONResponse:
    """SGLang's failure answer for weight calls."""
    return JSONResponse({"success": False, "message": message, **extra}, status_code=status)


def _field(body: dict, name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise HTTPException(400, f"{name} must be a {kind.__name__}, got {str(value)[:80]!r}")
    return value


async def _serving_versions(gw: Gateway) -> dict[str, str | None]:
    await gw.pool.check_all()
    return {e.url: e.weight_version for e in gw.pool.healthy()}


@router.post(
    "/update_weights_from_disk",
    response_model=None,
    openapi_extra=body_doc(
        {
            "model_path": {"type": "string"},
            "weight_version": {"type": "string"},
            "abort_all_requests": {"type": "boolean"},
        }
    ),
)
async def update_weights_from_disk(_: AdminAccess, gw: GatewayDep, body: JsonObject) -> Any:
    model_path = _field(body, "model_path", str, "")
    if not model_path:
        raise HTTPException(400, "model_path is required")
    version = _field(body, "weight_version", str, "")
    abort_all = _field(body, "abort_all_requests", bool, False)
    if len(version) > MAX_VERSION_CHARS:
        raise HTTPException(400, f"weight_version has more than {MAX_VERSION_CHARS} characters")
    if not version:  # SGLang keeps the serving version when none is given
        serving = set((await _serving_versions(gw)).values())
        if len(serving) != 1 or None in serving:
            return _failure(
                409, f"the engines serve different versions {sorted(map(str, serving))}: give weight_version"
            )
        version = serving.pop()
    started = time.monotonic()
    try:
        result = await gw.reloads.reload(model_path, version, "abort" if abort_all else "retract", False)
    except PermissionError as err:
        return _failure(403, str(err))
    except ValueError as err:
        return _failure(400, str(err))
    except ReloadFailed as err:
        gw.metrics.reloads.labels("rolled_back").inc()
        return _failure(400, str(err), engines=err.engines)
    gw.metrics.reloads.labels("success").inc()
    gw.metrics.reload_seconds.observe(time.monotonic() - started)
    return {"success": True, "message": f"every engine serves {version}", "weight_version": version, **result}


@router.post(
    "/pause_generation", response_model=None, openapi_extra=body_doc({"mode": {"enum": list(PAUSE_MODES)}})
)
async def pause_generation(_: AdminAccess, gw: GatewayDep, body: OptionalJsonObject) -> dict:
    mode = _field(body, "mode", str, "abort")  # SGLang's default
    if mode not in PAUSE_MODES:
        raise HTTPException(400, f"mode must be one of {list(PAUSE_MODES)}, got {mode[:40]!r}")
    if mode == "abort":
        gw.reloads.abort_all()  # what is aborted now stays aborted, whatever the last reload said
    return {"message": f"paused ({mode})", "engines": await fan_out(gw, "/pause_generation", {"mode": mode})}


@router.post("/continue_generation", response_model=None)
async def continue_generation(_: AdminAccess, gw: GatewayDep) -> dict:
    return {"message": "continued", "engines": await fan_out(gw, "/continue_generation", {})}


@router.post(
    "/abort_request",
    response_model=None,
    openapi_extra=body_doc({"rid": {"type": "string"}, "abort_all": {"type": "boolean"}}),
)
async def abort_request(_: AdminAccess, gw: GatewayDep, body: OptionalJsonObject) -> dict:
    rid = _field(body, "rid", str, "")
    abort_all = _field(body, "abort_all", bool, False)
    if not rid and not abort_all:
        raise HTTPException(400, "give rid, or abort_all: true")
    if abort_all:
        gw.reloads.abort_all()
    forward = {"abort_all": True} if abort_all else {"rid": rid}
    return {"engines": await fan_out(gw, "/abort_request", forward)}


@router.api_route("/flush_cache", methods=["GET", "POST"], response_model=None)
async def flush_cache(_: AdminAccess, gw: GatewayDep) -> PlainTextResponse:
    answers = await fan_out(gw, "/flush_cache", {})
    return PlainTextResponse(f"Cache flushed on {len(answers)} engine(s).\n")


@router.get("/get_weight_version", response_model=None)
async def get_weight_version(_: ApiAccess, gw: GatewayDep) -> Any:
    serving = await _serving_versions(gw)
    if not serving:
        raise HTTPException(503, "no healthy engine")
    versions = set(serving.values())
    if len(versions) != 1:
        return JSONResponse({"detail": "the engines serve different versions", "engines": serving}, 409)
    return {"weight_version": versions.pop()}


@router.get("/health", response_model=None)
async def health(gw: GatewayDep) -> Any:
    if not gw.pool.healthy():
        return JSONResponse({"status": "no healthy engine"}, status_code=503)
    return {"status": "ok"}


@router.get("/health_generate", response_model=None)
async def health_generate(_: ApiAccess, gw: GatewayDep) -> Any:
    """One greedy token from some healthy engine, as SGLang's own check generates one."""
    try:
        await gw.forwarder.generate(dict(HEALTH_GENERATE_BODY))
    except (EngineRejected, NoEngineAvailable) as err:
        return JSONResponse({"status": "generation failed", "detail": str(err)[:500]}, status_code=503)
    return {"status": "ok"}


def _per_engine(path: str):
    async def refuse(_: AdminAccess) -> JSONResponse:
        return _failure(
            400,
            f"{path} is per engine: behind the gateway each engine is its own rank. Use POST "
            "/v1/weights/group and /v1/weights/distributed (RolloutClient.init_weights_group / "
            "push_weights), or send SGLang's calls to each engine",
        )

    return refuse


for _path in PER_ENGINE_ROUTES:
    router.add_api_route(_path, _per_engine(_path), methods=["POST"], response_model=None)
