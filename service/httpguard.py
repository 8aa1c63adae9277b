"""What the engine and the gateway share at their HTTP edge: tokens, body limits, JSON parsing,
and noticing that a client went away.

Both servers are plain ASGI apps (FastAPI); these helpers stay below FastAPI so the hot path pays
for headers only, not for extra tasks per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Iterable
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
PLACEHOLDER_TOKENS = {"changeme", "change-me", "secret", "token", "xxx", "placeholder"}
MIN_TOKEN_CHARS = 12
MAX_BODY_BYTES = 32 << 20  # 32 MiB: thousands of long prompts fit; larger is a mistake


def check_token(name: str, token: str | None) -> None:
    """Refuse placeholder secrets at start-up."""
    if token is not None and (token.lower() in PLACEHOLDER_TOKENS or len(token) < MIN_TOKEN_CHARS):
        raise ValueError(
            f"{name} looks like a placeholder: use a random secret of {MIN_TOKEN_CHARS}+ characters"
        )


def bearer_matches(authorization: str | None, expected: str) -> bool:
    """``Authorization: Bearer <expected>``, compared in constant time; a raw token is refused."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def parse_json_object(raw: bytes) -> tuple[dict | None, str | None]:
    """(the body, None), or (None, why it is not a JSON object): bad UTF-8, bad JSON, nesting so
    deep the parser gives up, or a non-object."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, "the body is not valid JSON"
    if not isinstance(body, dict):
        return None, "the body must be a JSON object"
    return body, None


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns when the client has gone away; call it only after the body has been read."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def first_or_disconnect(work: Any, receive: Receive) -> tuple[bool, Any]:
    """Await ``work`` unless the client disconnects first: (True, result) or (False, None), with
    ``work`` cancelled. Exceptions of ``work`` propagate."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False, None


class BodyLimit:
    """413 for bodies over ``max_bytes``, whether announced by Content-Length or sent chunked.

    A chunked body (no Content-Length) is read here up to the limit and replayed to the app; with a
    Content-Length the server already refuses to read past it, so only the header is checked.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        size = headers.get(b"content-length")
        if size is not None:
            if not size.isdigit() or int(size) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if (
            scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS")
            and b"transfer-encoding" not in headers
        ):
            await self.app(scope, receive, send)
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away while sending
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = JSONResponse(
            {"detail": f"body larger than {self.max_bytes} bytes", "error": {"message": "body too large"}},
            status_code=413,
        )
        await refused(scope, receive, send)


class BearerAuth:
    """Every path but ``public`` needs ``Authorization: Bearer <token>`` (the engine's guard)."""

    def __init__(self, app: ASGIApp, token: str, public: Iterable[str] = ()):
        self.app = app
        self.token = token
        self.public = set(public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.public:
            authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not bearer_matches(authorization, self.token):
                refused = JSONResponse(
                    {"error": {"message": "missing or wrong bearer token (BEBOP_ENGINE_TOKEN)", "code": 401}},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def body_doc(properties: dict) -> dict:
    """An OpenAPI request body for a route that reads its JSON by hand (for /docs and fuzzing)."""
    schema = {"type": "object", "properties": properties}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# nginx's "client closed request": the caller is gone and reads nothing; logs and metrics tell it apart
CLIENT_CLOSED = 499
