"""Liveness (``/healthz``: the process answers), readiness (``/readyz``: some engine is healthy) and
the Prometheus scrape (``/metrics``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest

from ..deps import GatewayDep, ScrapeAccess

PROMETHEUS_TEXT = "text/plain; version=0.0.4"  # the exposition format Prometheus scrapes

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=None)
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(gw: GatewayDep) -> JSONResponse | dict:
    healthy = len(gw.pool.healthy())
    if not healthy:
        return JSONResponse({"status": "no healthy engine"}, status_code=503)
    return {"status": "ok", "healthy_engines": healthy}


@router.get("/metrics", response_model=None)
async def metrics(_: ScrapeAccess, gw: GatewayDep) -> PlainTextResponse:
    gw.metrics.refresh_engines(gw.pool)
    return PlainTextResponse(generate_latest(gw.metrics.registry).decode(), media_type=PROMETHEUS_TEXT)
