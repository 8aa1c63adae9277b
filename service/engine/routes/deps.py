"""What the engine's routes depend on, as ``Annotated[..., Depends(...)]`` aliases.

The bearer token is not a dependency but ``httpguard.BearerAuth``, the outermost middleware: it
refuses a request before its body is read (a dependency would run after the body cap, answering 413
where a client without the token gets 401) and covers ``/openapi.json``, ``/docs`` and unknown paths.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from ...httpguard import parse_json_object
from ..engine import Engine
from ..protocol import BadRequest, error_body
from ..weight_update import WeightUpdater


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_weights(request: Request) -> WeightUpdater:
    return request.app.state.engine.weights


async def json_body(request: Request) -> dict:
    """The body as a JSON object (the routes read it by hand: unknown fields are ignored, as in
    SGLang, and every message is the engine's own); anything else is a 400."""
    body, why = parse_json_object(await request.body())
    if body is None:
        raise BadRequest(why)
    return body


EngineDep = Annotated[Engine, Depends(get_engine)]
WeightsDep = Annotated[WeightUpdater, Depends(get_weights)]
JsonBody = Annotated[dict, Depends(json_body)]


async def optional_json_body(request: Request) -> dict:
    """As ``json_body``, but an empty body is ``{}`` (calls that need no fields are often sent bare)."""
    return await json_body(request) if (await request.body()).strip() else {}


OptionalJsonBody = Annotated[dict, Depends(optional_json_body)]


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(status, message, **extra), status_code=status)
