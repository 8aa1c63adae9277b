"""Body-size limit and per-route request metrics, as a plain ASGI middleware.

Starlette's ``@app.middleware("http")`` wraps every request and response in extra tasks and
streams; on the rollout path that cost is the gateway's own overhead, so this one only looks at
the headers on the way in and the status on the way out.
"""

from __future__ import annotations

import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import GatewayMetrics


class LimitsAndMetrics:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = dict(scope["headers"]).get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > self.max_body_bytes):
            refused = JSONResponse(
                {"detail": f"body larger than {self.max_body_bytes} bytes"}, status_code=413
            )
            await refused(scope, receive, send)
            return
        start = time.monotonic()
        status = 500  # what the client sees if the app fails before starting a response

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            # the router writes the matched route into the scope it was given
            name = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.monotonic() - start)
