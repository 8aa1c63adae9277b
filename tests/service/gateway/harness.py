"""The gateway app in process, in front of FAKE engines (``fake_engine.FakeEngine``), for the
in-process gateway tests."""

import asyncio

import httpx

from bebop.service.gateway.app import build_app
from bebop.service.gateway.settings import GatewaySettings
from tests.service.gateway.fake_engine import FakeEngine


def run_gateway(test, fakes: int = 1, attach: bool = True, **settings) -> None:
    """``await test(client, gateway, fakes)`` against an app built from ``settings``, with ``fakes``
    fake engines running and, when ``attach``, configured as its engines. The lifespan does not run
    under the ASGI transport: the pool is checked here instead."""

    async def main():
        started = [FakeEngine() for _ in range(fakes)]
        for fake in started:
            await fake.__aenter__()
        try:
            urls = [f.url for f in started] if attach else []
            app = build_app(GatewaySettings(engine_urls=urls, **settings))
            gw = app.state.gateway
            await gw.pool.check_all()
            transport = httpx.ASGITransport(app=app)
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                    await test(client, gw, started)
            finally:
                await gw.client.close()
        finally:
            for fake in reversed(started):
                await fake.__aexit__(None, None, None)

    asyncio.run(main())
