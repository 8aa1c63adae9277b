"""``bebop serve``'s FastAPI app: the gateway state, middleware, error answers, lifespan and routers.

The routes live in ``routes/`` (one module per resource), what they share in ``deps.py``; the work
lives in the pool (routing, health), the rollout service (fan-out, retries, continuation) and the
reload coordinator (all-or-nothing updates).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..httpguard import BodyLimit
from .deps import BadJsonBody
from .inflight import Overloaded
from .middleware import LimitsAndMetrics
from .pool import NoEngineAvailable
from .reload import GroupMismatch, ReloadFailed
from .rollouts import EngineRejected
from .routes import ROUTERS
from .settings import GatewaySettings
from .state import Gateway

RETRY_AFTER = {"Retry-After": "1"}  # seconds: engines come back and samples finish that fast


def build_app(settings: GatewaySettings) -> FastAPI:
    """The app for one validated ``settings``; its state is ``app.state.gateway``."""
    gw = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.engine_dns:
            await gw.pool.discover(settings.engine_dns)
        await gw.pool.check_all()
        health = asyncio.create_task(gw.pool.health_loop(settings.health_interval_s, settings.engine_dns))
        yield
        health.cancel()
        await gw.client.close()

    app = FastAPI(title="Bebop gateway", description="Rollout service for RL trainers", lifespan=lifespan)
    app.state.gateway = gw
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # chunked bodies too
    app.add_middleware(LimitsAndMetrics, metrics=gw.metrics, max_body_bytes=settings.max_body_bytes)
    for exception, handler in ERROR_ANSWERS.items():
        app.add_exception_handler(exception, handler)
    for router in ROUTERS:
        app.include_router(router)
    return app


# ---------------------------------------------------------------------- error answers
async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
    errors = [{"loc": list(e.get("loc", [])), "msg": e.get("msg")} for e in err.errors()]
    return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)


async def _bad_json(_: Request, err: BadJsonBody) -> JSONResponse:
    """SGLang's error shape: the pass-through answers as an SGLang server would."""
    return JSONResponse({"error": {"message": str(err), "code": 400}}, status_code=400)


async def _rejected(_: Request, err: EngineRejected) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=400)


async def _unavailable(_: Request, err: NoEngineAvailable) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=503, headers=RETRY_AFTER)


async def _overloaded(_: Request, err: Overloaded) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=429, headers=RETRY_AFTER)


async def _reload_failed(request: Request, err: ReloadFailed) -> JSONResponse:
    request.app.state.gateway.metrics.reloads.labels("rolled_back").inc()
    return JSONResponse({"detail": str(err), "engines": err.engines}, status_code=409)


async def _group_mismatch(_: Request, err: GroupMismatch) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=409)


ERROR_ANSWERS = {
    RequestValidationError: _invalid,
    BadJsonBody: _bad_json,
    EngineRejected: _rejected,
    NoEngineAvailable: _unavailable,
    Overloaded: _overloaded,
    ReloadFailed: _reload_failed,
    GroupMismatch: _group_mismatch,
}
