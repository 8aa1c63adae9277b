"""SGLang's control endpoints on the gateway, in process in front of FAKE engines
(``fake_engine.FakeEngine``): a trainer that knows only SGLang's protocol (slime, AReaL) and was given
the gateway's address reloads, pauses, resumes, aborts, flushes and reads the version of every engine
at once, in SGLang's request and answer shapes; the per-engine distributed calls are refused with a
400 that says what to use instead, never a 404."""

from pathlib import Path

from tests.service.gateway.harness import run_gateway

ROOT = Path("/ckpt")  # the operator's allowed weight root; the fakes never read the disk
ADMIN = "admin-secret-0123456789"


def run(test, engines: int = 2, **settings):
    """``test(client, gateway, fakes)`` against an app in front of ``engines`` fakes."""
    run_gateway(test, engines, weights_roots=[ROOT], **settings)


def test_update_weights_from_disk_reloads_every_engine_in_sglangs_shape():
    async def test(client, gw, fakes):
        r = await client.post(
            "/update_weights_from_disk", json={"model_path": f"{ROOT}/v1", "weight_version": "v1"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["success"] is True and r.json()["weight_version"] == "v1"
        assert [f.version for f in fakes] == ["v1", "v1"] and not any(f.paused for f in fakes)
        assert (await client.get("/get_weight_version")).json() == {"weight_version": "v1"}
        # without weight_version the version stays (SGLang's rule), the weights still change
        r = await client.post("/update_weights_from_disk", json={"model_path": f"{ROOT}/v2"})
        assert r.status_code == 200 and [f.model_path for f in fakes] == [f"{ROOT}/v2"] * 2
        assert [f.version for f in fakes] == ["v1", "v1"]

    run(test)


def test_a_failed_reload_is_sglangs_400_and_every_engine_keeps_its_weights():
    async def test(client, gw, fakes):
        fakes[1].fail_update = "header too short"
        r = await client.post(
            "/update_weights_from_disk",
            json={"model_path": f"{ROOT}/v1", "weight_version": "v1", "abort_all_requests": True},
        )
        assert r.status_code == 400 and r.json()["success"] is False
        assert "header too short" in str(r.json())
        assert [f.version for f in fakes] == ["v0", "v0"]  # all or nothing
        r = await client.post("/update_weights_from_disk", json={"model_path": "/etc", "weight_version": "x"})
        assert r.status_code == 403 and "outside the allowed weight roots" in r.json()["message"]
        for bad in ({}, {"model_path": 3}, {"model_path": f"{ROOT}/v1", "abort_all_requests": "yes"}):
            r = await client.post("/update_weights_from_disk", json=bad)
            assert r.status_code == 400 and r.json()["detail"], (bad, r.text)

    run(test)


def test_pause_continue_abort_and_flush_reach_every_engine():
    async def test(client, gw, fakes):
        r = await client.post("/pause_generation", json={"mode": "retract"})
        assert r.status_code == 200 and all(f.paused for f in fakes)
        assert set(r.json()["engines"]) == {f.url for f in fakes}
        r = await client.post("/continue_generation")  # bare, as clients send it
        assert r.status_code == 200 and not any(f.paused for f in fakes)
        assert (await client.post("/pause_generation", json={"mode": "sideways"})).status_code == 400
        assert (await client.post("/abort_request", json={"abort_all": True})).status_code == 200
        assert (await client.post("/abort_request", json={"rid": "r-1"})).status_code == 200
        assert (await client.post("/abort_request")).status_code == 400  # nothing named
        assert (await client.get("/flush_cache")).status_code == 200
        for fake in fakes:
            paths = fake.paths()
            for path in ("/pause_generation", "/continue_generation", "/abort_request", "/flush_cache"):
                assert path in paths, (fake.url, path)

    run(test)


def test_versions_health_and_refused_per_engine_calls():
    async def test(client, gw, fakes):
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/health_generate")).status_code == 200
        fakes[1].version = "v9"
        r = await client.get("/get_weight_version")
        assert r.status_code == 409 and r.json()["engines"] == {fakes[0].url: "v0", fakes[1].url: "v9"}
        r = await client.post("/update_weights_from_disk", json={"model_path": f"{ROOT}/v1"})
        assert r.status_code == 409 and "give weight_version" in r.json()["message"]
        for path in (
            "/init_weights_update_group",
            "/update_weights_from_distributed",
            "/begin_weight_update",
        ):
            r = await client.post(path, json={})
            assert r.status_code == 400 and "/v1/weights/distributed" in r.json()["message"], path

    run(test)


def test_control_calls_need_the_admin_token_when_one_is_set():
    async def test(client, gw, fakes):
        assert (await client.post("/pause_generation", json={})).status_code == 401
        assert not any(f.paused for f in fakes)
        r = await client.post("/pause_generation", json={}, headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200 and all(f.paused for f in fakes)
        assert (await client.get("/health")).status_code == 200  # liveness stays open, as /healthz

    run(test, api_token="api-secret-0123456789", admin_token=ADMIN)
