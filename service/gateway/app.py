"""``bebop serve``'s FastAPI app: rollouts, SGLang pass-through, weights, control, engines, health.

Routes stay thin: the work lives in the pool (routing, health), the rollout service (fan-out,
retries, continuation) and the reload coordinator (all-or-nothing updates).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import generate_latest

from ..httpguard import BodyLimit, bearer_matches, first_or_disconnect, parse_json_object
from .metrics import GatewayMetrics
from .middleware import LimitsAndMetrics
from .pool import EnginePool, NoEngineAvailable
from .reload import GroupMismatch, ReloadCoordinator, ReloadFailed
from .rollouts import EngineRejected, Forwarder, RolloutService
from .schemas import (
    EngineRequest,
    PauseRequest,
    RolloutRequest,
    RolloutResponse,
    WeightGroupRequest,
    WeightPushRequest,
    WeightsRequest,
)
from .settings import GatewaySettings
from .upstream import Upstream

log = logging.getLogger(__name__)
SGLANG_GENERATE_DOC = {
    "summary": "SGLang /generate, passed through to one engine (stream: server-sent events)",
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "input_ids": {"type": "array", "items": {"type": "integer"}},
                        "sampling_params": {"type": "object"},
                        "stream": {"type": "boolean"},
                        "return_logprob": {"type": "boolean"},
                        "rid": {"type": "string"},
                    },
                }
            }
        },
    },
}
MAX_BODY_BYTES = 32 << 20  # 32 MiB: thousands of long prompts fit; larger is a mistake
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, the metrics do


class Gateway:
    """Everything the routes need, built once from the settings."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.client = Upstream(settings.request_timeout_s, token=settings.engine_token)
        self.pool = EnginePool(self.client, settings.failures_to_open)
        for url in settings.engine_urls:
            self.pool.add(url)
        self.forwarder = Forwarder(self.pool, settings.request_timeout_s)
        self.reloads = ReloadCoordinator(self.pool, list(settings.weights_roots), settings.request_timeout_s)
        self.rollouts = RolloutService(self.forwarder, self.reloads)
        self.metrics = GatewayMetrics(settings.metric_tasks)
        self.inflight = 0

    def release(self, samples: int) -> None:
        self.inflight -= samples
        self.metrics.inflight.set(self.inflight)


def _token_guard(accepted: list[str], kind: str):
    """``Authorization: Bearer <one of accepted>``; open when nothing is configured (loopback only)."""

    async def check(authorization: Annotated[str | None, Header()] = None) -> None:
        if not accepted:
            return
        if not any(bearer_matches(authorization, token) for token in accepted):  # constant time each
            raise HTTPException(
                401, f"missing or wrong bearer token ({kind})", headers={"WWW-Authenticate": "Bearer"}
            )

    return check


def _tokens(settings: GatewaySettings) -> dict[str, list[str]]:
    """Which secrets open which routes. A route class whose own token is not set takes the other
    configured token, so no route is open once any token is set (see docs/security.md)."""
    api = settings.api_token or settings.admin_token
    admin = settings.admin_token or settings.api_token
    scrape = [t for t in (admin, settings.metrics_token) if t]
    return {"api": [api] if api else [], "admin": [admin] if admin else [], "metrics": scrape}


def build_app(settings: GatewaySettings) -> FastAPI:
    gw = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        if settings.engine_dns:
            await gw.pool.discover(settings.engine_dns)
        await gw.pool.check_all()
        health = asyncio.create_task(gw.pool.health_loop(settings.health_interval_s, settings.engine_dns))
        yield
        health.cancel()
        await gw.client.close()

    app = FastAPI(title="Bebop gateway", description="Rollout service for RL trainers", lifespan=lifespan)
    app.state.gateway = gw
    tokens = _tokens(settings)
    api = [Depends(_token_guard(tokens["api"], "api"))]
    admin = [Depends(_token_guard(tokens["admin"], "admin"))]
    scrape = [Depends(_token_guard(tokens["metrics"], "admin or metrics"))]

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)  # chunked bodies too
    app.add_middleware(LimitsAndMetrics, metrics=gw.metrics, max_body_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", [])), "msg": e.get("msg")} for e in err.errors()]
        return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(EngineRejected)
    async def rejected(_: Request, err: EngineRejected) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.exception_handler(NoEngineAvailable)
    async def unavailable(_: Request, err: NoEngineAvailable) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})

    def admit(samples: int) -> None:
        if gw.inflight + samples > settings.max_inflight:
            raise HTTPException(
                429,
                f"{gw.inflight} samples in flight; limit {settings.max_inflight}",
                headers={"Retry-After": "1"},
            )

    @app.post("/v1/rollouts", response_model=RolloutResponse, dependencies=api, tags=["rollouts"])
    async def rollouts(req: RolloutRequest, request: Request):
        samples = sum(p.n for p in req.prompts)
        admit(samples)
        gw.inflight += samples
        gw.metrics.inflight.set(gw.inflight)
        if req.stream:
            release = _once(lambda: gw.release(samples))
            lines = _ndjson(gw, req, release)
            weakref.finalize(lines, release)  # a client gone before the first line: never started
            return StreamingResponse(lines, media_type="application/x-ndjson")
        try:  # a client that goes away cancels its samples (and their engine calls)
            done, results = await first_or_disconnect(gw.rollouts.run(req), request.receive)
        finally:
            gw.release(samples)
        if not done:
            return Response(status_code=CLIENT_CLOSED)
        for r in results:
            gw.metrics.observe(r, req.task)
        # Serialized once here: returning the model would have FastAPI validate it all over again.
        return Response(RolloutResponse(results=results).model_dump_json(), media_type="application/json")

    @app.post("/generate", dependencies=api, tags=["sglang"], openapi_extra=SGLANG_GENERATE_DOC)
    async def generate(request: Request):
        body, why = parse_json_object(await request.body())
        if body is None:
            return JSONResponse({"error": {"message": why, "code": 400}}, status_code=400)
        if body.get("stream"):
            return StreamingResponse(await gw.forwarder.stream(body), media_type="text/event-stream")
        done, answer = await first_or_disconnect(gw.forwarder.generate_response(body), request.receive)
        if not done:
            return Response(status_code=CLIENT_CLOSED)
        return Response(answer.content, media_type="application/json")  # as the engine wrote it

    def reload_outcome(started: float, result: dict) -> dict:
        gw.metrics.reloads.labels("success").inc()
        gw.metrics.reload_seconds.observe(time.monotonic() - started)
        return result

    @app.post("/v1/weights", dependencies=admin, tags=["weights"])
    async def update_weights(req: WeightsRequest):
        started = time.monotonic()
        try:  # the coordinator checks the path against the allowed roots before anything else
            result = await gw.reloads.reload(
                req.model_path, req.version, req.pause_mode, req.continue_aborted
            )
        except PermissionError as err:
            raise HTTPException(403, str(err)) from None
        except ValueError as err:
            raise HTTPException(400, str(err)) from None
        return reload_outcome(started, result)

    @app.exception_handler(ReloadFailed)
    async def reload_failed(_: Request, err: ReloadFailed) -> JSONResponse:
        gw.metrics.reloads.labels("rolled_back").inc()
        return JSONResponse({"detail": str(err), "engines": err.engines}, status_code=409)

    @app.exception_handler(GroupMismatch)
    async def group_mismatch(_: Request, err: GroupMismatch) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=409)

    @app.get("/v1/weights/group", dependencies=admin, tags=["weights"])
    async def weight_group():
        """The layout a trainer needs before it joins: world size and each engine's rank offset."""
        await gw.pool.check_all()
        layout = await gw.reloads.group_layout()
        current = gw.reloads.group
        return {
            "world_size": layout.world_size,
            "ranks": layout.ranks,
            "group_name": current.name if current else None,
        }

    @app.post("/v1/weights/group", dependencies=admin, tags=["weights"])
    async def init_weight_group(req: WeightGroupRequest):
        """Every engine joins the trainer's group (blocks until the trainer has joined as rank 0)."""
        return await gw.reloads.init_group(
            req.master_address, req.master_port, req.world_size, req.group_name, req.backend
        )

    @app.post("/v1/weights/distributed", dependencies=admin, tags=["weights"])
    async def push_weights(req: WeightPushRequest):
        """Stage the trainer's broadcast on every engine, then commit all or none."""
        manifest = {
            "names": req.names,
            "dtypes": req.dtypes,
            "shapes": req.shapes,
            "group_name": req.group_name,
        }
        started = time.monotonic()
        result = await gw.reloads.push(manifest, req.version, req.pause_mode, req.continue_aborted)
        return reload_outcome(started, result)

    @app.get("/v1/weights", tags=["weights"], dependencies=api)
    async def weights():
        await gw.pool.check_all()
        return {
            "engines": {e.url: e.weight_version for e in gw.pool.engines.values()},
            "last_reload": gw.reloads.last,
        }

    async def fan_out(path: str, body: dict) -> dict:
        return await gw.reloads.post_all(path, body, [e.url for e in gw.pool.healthy()])

    @app.post("/v1/pause", dependencies=admin, tags=["control"])
    async def pause(req: PauseRequest):
        return {"engines": await fan_out("/pause_generation", {"mode": req.mode})}

    @app.post("/v1/resume", dependencies=admin, tags=["control"])
    async def resume():
        return {"engines": await fan_out("/continue_generation", {})}

    @app.post("/v1/abort", dependencies=admin, tags=["control"])
    async def abort():
        gw.reloads.abort_all()  # what is aborted now stays aborted, whatever the last reload said
        return {"engines": await fan_out("/abort_request", {"abort_all": True})}

    @app.get("/v1/engines", dependencies=admin, tags=["engines"])
    async def engines():
        return {"engines": [e.as_dict() for e in gw.pool.engines.values()]}

    @app.post("/v1/engines", dependencies=admin, tags=["engines"])
    async def add_engine(req: EngineRequest):
        try:
            engine = gw.pool.add(req.url)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        await gw.pool.check(engine)
        return engine.as_dict()

    @app.delete("/v1/engines", dependencies=admin, tags=["engines"])
    async def remove_engine(req: EngineRequest):
        if not gw.pool.remove(req.url):
            raise HTTPException(404, f"no engine {req.url}")
        return {"removed": req.url}

    @app.get("/healthz", tags=["health"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz():
        healthy = len(gw.pool.healthy())
        if not healthy:
            return JSONResponse({"status": "no healthy engine"}, status_code=503)
        return {"status": "ok", "healthy_engines": healthy}

    @app.get("/metrics", tags=["health"], dependencies=scrape)
    async def metrics():
        gw.metrics.refresh_engines(gw.pool)
        return PlainTextResponse(
            generate_latest(gw.metrics.registry).decode(), media_type="text/plain; version=0.0.4"
        )

    return app


async def _ndjson(gw: Gateway, req: RolloutRequest, release):
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
        release()


def _once(fn):
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            fn()

    return call
