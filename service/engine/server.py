"""``bebop engine``: the embedded engine behind SGLang 0.5.23's native HTTP protocol.

Routes and field names follow SGLang so the gateway (and slime, AReaL, smg) talk to this engine
and to SGLang servers alike. Unknown request fields are ignored, as SGLang does; bad values get a
400 with a message, and everything is validated before anything is queued. With
``BEBOP_ENGINE_TOKEN`` every route but ``/health`` needs ``Authorization: Bearer <token>`` (as
SGLang's ``--api-key``); checkpoints load only from under the model directory and ``--weights-root``.
A client that goes away aborts its requests. Bebop's additions ride in ``meta_info``:
``spec_accept_per_position``, ``entropy_mean``, ``weight_version_spans`` and, with
``return_entropy``, ``output_token_entropy``.

This module builds the app and serves it; ``protocol`` parses the bodies and builds the answers,
``routes`` holds the handlers, ``weight_update`` changes the weights, ``engine`` holds the model,
runner and scheduler, and ``config`` the settings.
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse

from ..httpguard import LOOPBACK, BearerAuth, BodyLimit, check_token
from .config import EngineConfig
from .engine import Engine
from .protocol import BadRequest
from .routes import ROUTERS
from .routes.deps import error_response
from .scheduler import Overloaded

__all__ = ["Engine", "EngineConfig", "build_app", "check_listen", "serve_engine"]

log = logging.getLogger(__name__)
PUBLIC_PATHS = {"/health"}  # the only path open without BEBOP_ENGINE_TOKEN (load balancers probe it)


def build_app(engine: Engine) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        engine.scheduler.stop()  # fail whatever is still queued explicitly rather than dropping it

    app = FastAPI(title="Bebop engine", description="SGLang-compatible embedded engine", lifespan=lifespan)
    app.state.engine = engine  # routes.deps.get_engine reads it
    app.add_middleware(BodyLimit, max_bytes=engine.cfg.max_body_bytes)
    if engine.cfg.api_token:  # outermost: a request without the token is refused before its body is read
        app.add_middleware(BearerAuth, token=engine.cfg.api_token, public=PUBLIC_PATHS)

    @app.exception_handler(BadRequest)
    async def bad_request(_: HTTPRequest, err: BadRequest) -> JSONResponse:
        return error_response(400, str(err))

    @app.exception_handler(Overloaded)
    async def overloaded(_: HTTPRequest, err: Overloaded) -> JSONResponse:
        return error_response(503, str(err), retry_after=1)

    for router in ROUTERS:
        app.include_router(router)
    return app


def check_listen(host: str, token: str | None) -> None:
    """Without BEBOP_ENGINE_TOKEN the engine only listens on loopback (as the gateway does)."""
    check_token("BEBOP_ENGINE_TOKEN", token)
    if host not in LOOPBACK and not token:
        raise ValueError(
            f"refusing to listen on {host} without BEBOP_ENGINE_TOKEN: "
            "without a token the engine only listens on loopback"
        )


def serve_engine(cfg: EngineConfig, host: str, port: int) -> None:
    import faulthandler
    import signal

    import uvicorn

    # A crash inside a native op (segfault, abort) would otherwise end the engine without a word:
    # load tests saw engines vanish with nothing in their logs.
    faulthandler.enable()
    # `kill -USR2 <pid>` prints every thread's stack to the log: how to see where a stuck engine waits.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    check_listen(host, cfg.api_token)
    engine = Engine(cfg)
    engine.scheduler.start()
    log.info("engine on %s:%d serving %s (spec %s)", host, port, cfg.model_path, cfg.spec)
    uvicorn.run(
        build_app(engine),
        host=host,
        port=port,
        log_level="warning",
        timeout_keep_alive=cfg.keep_alive_s,
        timeout_graceful_shutdown=cfg.shutdown_grace_s,
    )
