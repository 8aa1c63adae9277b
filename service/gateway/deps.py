"""What the routes share, as FastAPI dependencies: the gateway state, the token checks and the
raw-JSON body of the SGLang pass-through.

    async def route(gw: GatewayDep, _: AdminAccess) -> dict: ...

The token checks read the tokens from the gateway state (built once from the settings), so a route
module holds no secret and no settings of its own.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request

from ..httpguard import bearer_matches, parse_json_object
from .state import Gateway


class BadJsonBody(ValueError):
    """A pass-through body that is not a JSON object: 400 in SGLang's error shape."""


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def _check(accepted: list[str], kind: str, authorization: str | None) -> None:
    """``Authorization: Bearer <one of accepted>``; open when nothing is configured (loopback only)."""
    if not accepted:
        return
    if not any(bearer_matches(authorization, token) for token in accepted):  # constant time each
        raise HTTPException(
            401, f"missing or wrong bearer token ({kind})", headers={"WWW-Authenticate": "Bearer"}
        )


async def require_api(gw: GatewayDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Rollouts, /generate and reading the weight versions."""
    _check(gw.tokens.api, "api", authorization)


async def require_admin(gw: GatewayDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Weights, pause/resume/abort, engines."""
    _check(gw.tokens.admin, "admin", authorization)


async def require_scrape(gw: GatewayDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """/metrics: the admin token or the scrape-only metrics token."""
    _check(gw.tokens.metrics, "admin or metrics", authorization)


ApiAccess = Annotated[None, Depends(require_api)]
AdminAccess = Annotated[None, Depends(require_admin)]
ScrapeAccess = Annotated[None, Depends(require_scrape)]


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, unvalidated (the engine checks SGLang's fields itself)."""
    body, why = parse_json_object(await request.body())
    if body is None:
        raise BadJsonBody(why)
    return body


JsonObject = Annotated[dict[str, Any], Depends(json_object)]


async def optional_json_object(request: Request) -> dict[str, Any]:
    """As ``json_object``, but an empty body is ``{}``: SGLang's control calls are often sent bare."""
    raw = await request.body()
    return await json_object(request) if raw.strip() else {}


OptionalJsonObject = Annotated[dict[str, Any], Depends(optional_json_object)]
