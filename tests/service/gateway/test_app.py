"""The gateway app in process (httpx's ASGI transport) in front of a FAKE engine
(``fake_engine.FakeEngine``): the routers, the shared dependencies and the error answers keep the
HTTP contract (paths, status codes, bodies, Retry-After and WWW-Authenticate headers, token rules).
The process-level tests (``test_gateway.py``, ``test_abuse.py``) cover the same app against real
engines; these run in a second and pin the details."""

import re

from tests.service.gateway.harness import run_gateway

API, ADMIN, SCRAPE = "api-secret-0123456789", "admin-secret-0123456789", "scrape-secret-0123456789"
ROLLOUT = {"prompts": [{"input_ids": [5, 6], "n": 2}], "sampling_params": {"max_new_tokens": 3}, "seed": 1}


def run(test, with_engine: bool = True, **settings):
    """``test(client, gateway, fake)`` against an app built from ``settings``, with one fake engine
    (configured as its engine when ``with_engine``)."""

    async def one(client, gw, fakes):
        await test(client, gw, fakes[0])

    run_gateway(one, 1, attach=with_engine, **settings)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_rollouts_and_generate_pass_through_and_release_their_counts():
    async def test(client, gw, fake):
        r = await client.post("/v1/rollouts", json=ROLLOUT)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert sorted((x["prompt_index"], x["sample_index"]) for x in results) == [(0, 0), (0, 1)]
        assert all(x["output_ids"] == [7, 7, 7] and x["weight_version"] == "v0" for x in results)
        lines = (await client.post("/v1/rollouts", json={**ROLLOUT, "stream": True})).text.splitlines()
        assert len(lines) == 2 and all('"output_ids"' in line for line in lines)
        r = await client.post("/generate", json={"input_ids": [1], "sampling_params": {"max_new_tokens": 2}})
        assert r.status_code == 200 and r.json()["output_ids"] == [7, 7]
        assert gw.admission.count == 0 and gw.pool.engines[fake.url].outstanding == 0
        metrics = (await client.get("/metrics")).text
        assert re.search(r"^bebop_rollouts_inflight 0\.0$", metrics, re.M)
        assert 'bebop_http_requests_total{route="/v1/rollouts",status="200"} 2.0' in metrics

    run(test)


def test_error_answers_keep_their_shapes_and_headers():
    async def test(client, gw, fake):
        r = await client.post("/generate", content=b"{nope")
        assert r.status_code == 400
        assert r.json() == {"error": {"message": "the body is not valid JSON", "code": 400}}
        r = await client.post("/generate", content=b"[1]")
        assert r.json()["error"]["message"] == "the body must be a JSON object"
        r = await client.post("/v1/rollouts", json={"prompts": []})
        assert r.status_code == 422 and r.json()["detail"] == "invalid request" and r.json()["errors"]
        r = await client.post("/v1/rollouts", json={**ROLLOUT, "prompts": [{"input_ids": [5], "n": 3}]})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json() == {"detail": "0 samples in flight; limit 2"}
        assert gw.admission.count == 0
        fake.generate_status = 400
        r = await client.post("/v1/rollouts", json=ROLLOUT)
        assert r.status_code == 400 and r.json() == {"detail": "fake failure 400"}
        r = await client.post("/v1/weights", json={"model_path": "/etc", "version": "x"})
        assert r.status_code == 403 and "outside the allowed weight roots" in r.json()["detail"]
        big = b"x" * (gw.settings.max_body_bytes + 1)
        assert (await client.post("/v1/rollouts", content=big)).status_code == 413

    run(test, max_inflight=2)


def test_no_healthy_engine_is_503_with_retry_after():
    async def test(client, gw, fake):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json() == {"status": "no healthy engine"}
        r = await client.post("/v1/rollouts", json=ROLLOUT)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "no healthy engine" in r.json()["detail"]
        assert gw.admission.count == 0

    run(test, with_engine=False)


def test_engines_control_and_weights_routes():
    async def test(client, gw, fake):
        assert (await client.get("/readyz")).json() == {"status": "ok", "healthy_engines": 1}
        listed = (await client.get("/v1/engines")).json()["engines"]
        assert [e["url"] for e in listed] == [fake.url] and listed[0]["healthy"] is True
        r = await client.request("DELETE", "/v1/engines", json={"url": "http://127.0.0.1:1"})
        assert r.status_code == 404 and r.json() == {"detail": "no engine http://127.0.0.1:1"}
        assert (await client.post("/v1/engines", json={"url": "ftp://x"})).status_code == 422
        r = await client.post("/v1/pause", json={"mode": "in_place"})
        assert r.json() == {"engines": {fake.url: {"success": True}}} and fake.paused
        assert (await client.post("/v1/resume")).status_code == 200 and not fake.paused
        assert (await client.post("/v1/abort")).status_code == 200
        assert fake.calls[-1] == ("/abort_request", {"abort_all": True})
        assert (await client.get("/v1/weights")).json() == {"engines": {fake.url: "v0"}, "last_reload": {}}
        r = await client.request("DELETE", "/v1/engines", json={"url": fake.url})
        assert r.json() == {"removed": fake.url} and gw.pool.engines == {}
        # with no engine left, a control call reached nobody: that is a 503, not an empty success
        for path in ("/v1/pause", "/v1/resume", "/v1/abort", "/pause_generation", "/continue_generation"):
            r = await client.post(path, json={})
            assert r.status_code == 503 and "no healthy engine" in r.text, (path, r.text)

    run(test)


def test_tokens_guard_each_route_class():
    async def test(client, gw, fake):
        r = await client.post("/v1/rollouts", json=ROLLOUT)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"detail": "missing or wrong bearer token (api)"}
        assert (await client.post("/v1/rollouts", json=ROLLOUT, headers=bearer(API))).status_code == 200
        assert (await client.post("/generate", content=b"{nope")).status_code == 401  # auth before parsing
        r = await client.post("/v1/pause", json={"mode": "abort"}, headers=bearer(API))
        assert r.status_code == 401 and r.json()["detail"] == "missing or wrong bearer token (admin)"
        assert (await client.post("/v1/resume", headers=bearer(ADMIN))).status_code == 200
        assert (await client.get("/v1/weights", headers=bearer(API))).status_code == 200
        assert (await client.get("/v1/engines", headers=bearer(API))).status_code == 401
        r = await client.get("/metrics", headers=bearer(API))
        assert (
            r.status_code == 401 and r.json()["detail"] == "missing or wrong bearer token (admin or metrics)"
        )
        for token in (ADMIN, SCRAPE):
            assert (await client.get("/metrics", headers=bearer(token))).status_code == 200
        assert (await client.get("/healthz")).status_code == 200  # probes stay open
        assert (await client.get("/readyz")).status_code == 200

    run(test, api_token=API, admin_token=ADMIN, metrics_token=SCRAPE)


def test_one_token_guards_every_route_class():
    async def test(client, gw, fake):
        assert (await client.post("/v1/rollouts", json=ROLLOUT)).status_code == 401
        assert (await client.post("/v1/rollouts", json=ROLLOUT, headers=bearer(API))).status_code == 200
        assert (await client.post("/v1/resume", headers=bearer(API))).status_code == 200
        assert (await client.get("/metrics")).status_code == 401

    run(test, api_token=API)


def test_the_routing_policy_setting_reaches_the_pool():
    async def test(client, gw, fake):
        assert gw.pool.policy.name == "round_robin"

    run(test, routing_policy="round_robin")
