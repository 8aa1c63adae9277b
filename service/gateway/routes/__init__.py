"""The gateway's routes, one module per resource, each owning an ``APIRouter``; ``app.py`` includes
them. Routes stay thin: the work lives in the pool, the rollout service and the reload coordinator."""

from __future__ import annotations

from fastapi import APIRouter

from . import control, engines, generate, health, rollouts, sglang_control, weights

ROUTERS: list[APIRouter] = [
    rollouts.router,
    generate.router,
    weights.router,
    control.router,
    engines.router,
    health.router,
    sglang_control.router,
]
