"""A FAKE SGLang 0.5.23 engine, for the gateway's weight protocol only.

A fake, because a real SGLang server cannot run on these CPU machines (its kernels need a GPU
driver). It enforces SGLang 0.5.23's weight-update session rules as
``sglang/srt/managers/scheduler_components/weight_updater.py`` states them: a distributed (or tensor)
update outside ``/begin_weight_update`` ... ``/end_weight_update`` fails with 400; a second begin
while a session is open fails; an end without a session fails. It receives no tensors (the trainer
side of the test broadcasts nothing) and logs every call, readable at ``GET /calls``.

    python -m tests.service.gateway.fake_sglang PORT [--old]   # --old: before 0.5.23, no session routes
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

SELECTORS = ("target", "draft", "all")


def build(old: bool) -> FastAPI:
    app = FastAPI()
    state = {"session": None, "version": "default", "calls": []}

    def answer(ok: bool, message: str) -> JSONResponse:
        return JSONResponse({"success": ok, "message": message}, status_code=200 if ok else 400)

    @app.middleware("http")
    async def log_calls(request: Request, call_next):
        if request.url.path not in ("/health", "/calls", "/model_info", "/server_info", "/metrics"):
            state["calls"].append(request.url.path)
        return await call_next(request)

    @app.get("/calls")
    async def calls():
        return state["calls"]

    @app.get("/health")
    async def health():
        return {}

    @app.get("/server_info")
    async def server_info():
        return {"tp_size": 1, "weight_version": state["version"]}

    @app.get("/model_info")
    async def model_info():
        return {"model_path": "/fake", "weight_version": state["version"], "is_generation": True}

    @app.post("/pause_generation")
    async def pause():
        return {"success": True}

    @app.post("/continue_generation")
    async def resume():
        return {"success": True}

    @app.post("/init_weights_update_group")
    async def init_group():
        return answer(True, "joined (fake: no process group)")

    @app.post("/destroy_weights_update_group")
    async def destroy_group():
        return answer(True, "left (fake: no process group)")

    if not old:

        @app.post("/begin_weight_update")
        async def begin(request: Request):
            selector = (await request.json()).get("selector", "all")
            if selector not in SELECTORS:
                return answer(False, f"invalid selector {selector!r}")
            if state["session"] is not None:
                return answer(
                    False, "a weight-update session is already open; call end_weight_update() first"
                )
            state["session"] = selector
            return answer(True, "session open")

        @app.post("/end_weight_update")
        async def end():
            if state["session"] is None:
                return answer(False, "no weight-update session is open; call begin_weight_update() first")
            state["session"] = None
            return answer(True, "session closed")

    @app.post("/update_weights_from_distributed")
    async def update(request: Request):
        body = await request.json()
        if "stage" in body:  # SGLang's msgspec struct refuses unknown fields
            return answer(False, "unexpected field 'stage'")
        if not old and state["session"] is None:
            return answer(
                False,
                "update_weights_from_distributed must run between begin_weight_update() and "
                "end_weight_update()",
            )
        if "refuse-me" in body.get("names", []):  # SGLang refuses, e.g., a name its model lacks
            return answer(False, "fake refusal: no parameter named refuse-me")
        state["version"] = body.get("weight_version") or state["version"]
        return answer(True, "Succeeded to update parameter online.")

    return app


if __name__ == "__main__":
    uvicorn.run(build("--old" in sys.argv), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
