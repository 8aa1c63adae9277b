"""``POST /generate``: SGLang's native call, passed through to one engine as it is."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ...httpguard import CLIENT_CLOSED, first_or_disconnect
from ..deps import ApiAccess, GatewayDep, JsonObject

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
                },
                # shown in /docs, and the first case a schema-driven client (or fuzzer) sends
                "example": {
                    "input_ids": [5, 6, 7],
                    "sampling_params": {"max_new_tokens": 4, "temperature": 0},
                },
            }
        },
    },
}

router = APIRouter(tags=["sglang"])


@router.post("/generate", openapi_extra=SGLANG_GENERATE_DOC)
async def generate(_: ApiAccess, gw: GatewayDep, body: JsonObject, request: Request) -> Response:
    # Not JSON: 400 in SGLang's error shape (BadJsonBody); the engine validates the fields. (A comment,
    # not a docstring: a docstring would become the operation's description in the OpenAPI schema.)
    if body.get("stream"):
        return StreamingResponse(await gw.forwarder.stream(body), media_type="text/event-stream")
    done, answer = await first_or_disconnect(gw.forwarder.generate_response(body), request.receive)
    if not done:
        return Response(status_code=CLIENT_CLOSED)
    return Response(answer.content, media_type="application/json")  # as the engine wrote it
