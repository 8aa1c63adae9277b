"""``POST /generate``: SGLang's native call, passed through to one engine as it is."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ...generate_doc import generate_doc
from ...httpguard import CLIENT_CLOSED, first_or_disconnect
from ..deps import ApiAccess, GatewayDep, JsonObject

router = APIRouter(tags=["sglang"])


@router.post(
    "/generate",
    openapi_extra=generate_doc("SGLang /generate, passed through to one engine (stream: server-sent events)"),
)
async def generate(_: ApiAccess, gw: GatewayDep, body: JsonObject, request: Request) -> Response:
    # Not JSON: 400 in SGLang's error shape (BadJsonBody); the engine validates the fields. (A comment,
    # not a docstring: a docstring would become the operation's description in the OpenAPI schema.)
    if body.get("stream"):
        return StreamingResponse(await gw.forwarder.stream(body), media_type="text/event-stream")
    done, answer = await first_or_disconnect(gw.forwarder.generate_response(body), request.receive)
    if not done:
        return Response(status_code=CLIENT_CLOSED)
    return Response(answer.content, media_type="application/json")  # as the engine wrote it
