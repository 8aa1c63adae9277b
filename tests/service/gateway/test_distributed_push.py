"""The distributed push through the gateway: a separate trainer process joins a group with every
engine (rank offsets handed out by the gateway) and broadcasts new weights; all engines commit them
or none does."""

import json
import subprocess
import sys
import textwrap

import httpx
import pytest

from tests.procs import free_port, running

TRAINER = textwrap.dedent(
    """
    import json, sys, torch
    from bebop.service.client import RolloutClient, RolloutError, WeightPushError
    from bebop.model import load_model

    gateway, model_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = load_model(model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # "one training step": every tensor moves, head included
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    out = {}
    with RolloutClient(gateway) as client:
        out["layout"] = client.init_weights_group(master_port=port)
        out["good"] = client.push_weights(state, "pushed-1", pause_mode="in_place")
        bad = dict(state)
        bad["mtp.fc.weight"] = torch.full_like(bad["mtp.fc.weight"], float("inf"))  # the head alone
        try:
            client.push_weights(bad, "pushed-2")
        except RolloutError as err:
            out["bad"] = {"status": err.status, "detail": err.detail}
        try:  # refused by the gateway before any engine receives: the SDK must not hang
            client.push_weights(state, "")
        except WeightPushError as err:
            out["early"] = str(err)
    print(json.dumps(out))
    """
)
GREEDY = {
    "input_ids": [5, 6, 7],
    "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True},
}


@pytest.fixture(scope="module")
def stack(quick_model):
    ports = [free_port(), free_port(), free_port()]
    with (
        running(["engine", "--model", str(quick_model), "--port", str(ports[0])], ports[0]) as a,
        running(["engine", "--model", str(quick_model), "--port", str(ports[1])], ports[1]) as b,
    ):
        args = ["serve", "--port", str(ports[2]), "--engine-url", a, "--engine-url", b]
        with running(args, ports[2], ready_path="/readyz") as gateway:
            yield gateway, [a, b]


def greedy(url):
    r = httpx.post(url + "/generate", json=GREEDY, timeout=60).json()
    return r["output_ids"], r["meta_info"]["weight_version"]


def test_trainer_push_reaches_every_engine_all_or_nothing(stack, quick_model):
    gateway, engines = stack
    before = [greedy(e)[0] for e in engines]
    layout = httpx.get(gateway + "/v1/weights/group").json()
    assert layout["world_size"] == 3 and sorted(layout["ranks"].values()) == [1, 2]

    out = subprocess.run(
        [sys.executable, "-c", TRAINER, gateway, str(quick_model), str(free_port())],
        capture_output=True,
        text=True,
        # The refused push leaves a broadcast pending; unless the SDK dissolves the group, gloo holds
        # the trainer's exit until the group timeout (120 s): this limit catches that hang.
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["layout"]["world_size"] == 3
    assert result["good"]["outcome"] == "success" and result["good"]["source"] == "distributed"

    # every engine serves the pushed weights, the same ones, and they are new
    after = [greedy(e) for e in engines]
    assert {v for _, v in after} == {"pushed-1"}
    assert after[0][0] == after[1][0] and after[0][0] != before[0]
    assert httpx.get(gateway + "/v1/weights").json()["engines"] == dict.fromkeys(engines, "pushed-1")

    # a push with a non-finite MTP tensor is refused by every engine: nothing changed anywhere
    assert result["bad"]["status"] == 409
    detail = result["bad"]["detail"]["engines"]
    assert set(detail) == set(engines) and all("Inf" in d["message"] for d in detail.values())
    assert [greedy(e) for e in engines] == after

    # an invalid request is refused up front, and the SDK says so rather than hanging; it dissolved
    # the group (the engines left it), so the next push needs a new one
    assert "refused before the engines received" in result["early"]
    assert httpx.get(gateway + "/v1/weights/group").json()["group_name"] is None


def test_push_without_a_group_or_with_bad_manifest_is_a_4xx(stack):
    gateway, _ = stack
    body = {"names": ["x"], "dtypes": ["float32"], "shapes": [[1]], "group_name": "nope", "version": "v"}
    r = httpx.post(gateway + "/v1/weights/distributed", json=body, timeout=30)
    assert r.status_code == 409 and "no weight update group" in r.json()["detail"]
    r = httpx.post(gateway + "/v1/weights/distributed", json={**body, "dtypes": []}, timeout=30)
    assert r.status_code == 422
    r = httpx.post(
        gateway + "/v1/weights/group",
        json={"master_address": "127.0.0.1", "master_port": 1234, "world_size": 7},
        timeout=30,
    )
    assert r.status_code == 409 and "expected 3" in r.json()["detail"]


# One member refuses before receiving (here: it lost the group, as a restarted engine would) while
# the other is inside the broadcast. The trainer's broadcast fails at once, the SDK leaves the group,
# which frees the other engine, and the gateway answers with what each engine serves. Before, the
# other engine sat paused in its receive until the 120 s group timeout, and the trainer with it.
ONE_MEMBER_GONE = textwrap.dedent(
    """
    import json, sys, time, httpx
    from bebop.service.client import RolloutClient, WeightPushError
    from bebop.model import load_model

    gateway, gone, model_dir, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    state = {k: v for k, v in load_model(model_dir).state_dict().items() if k != "lm_head.weight"}
    with RolloutClient(gateway) as client:
        group = client.init_weights_group(master_port=port)
        left = httpx.post(gone + "/destroy_weights_update_group", json={"group_name": group["group_name"]})
        assert left.status_code == 200, left.text
        start = time.monotonic()
        try:
            client.push_weights(state, "never-served")
            out = {"error": None}
        except WeightPushError as err:
            out = {"error": err.message, "details": err.details}
        out["waited_s"] = time.monotonic() - start
    print(json.dumps(out))
    """
)


def test_a_member_refusing_early_frees_the_others_at_once(stack, quick_model):
    gateway, engines = stack
    before = [greedy(e) for e in engines]
    out = subprocess.run(
        [sys.executable, "-c", ONE_MEMBER_GONE, gateway, engines[1], str(quick_model), str(free_port())],
        capture_output=True,
        text=True,
        timeout=110,  # under the engines' 120 s group timeout: a blocked receive fails this test
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] and "broadcast failed" in result["error"], result
    assert result["waited_s"] < 30, result
    # the gateway's verdict came with the error: the other member failed its receive (or, when the
    # SDK's leave reached it before the update did, had no group), the one that was gone refused,
    # and every engine serves what it served before
    verdict = result["details"]["gateway"]
    assert "all engines serve the old weights" in verdict["detail"], verdict
    other = verdict["engines"][engines[0]]["message"]
    assert "broadcast failed" in other or "no weight update group" in other, verdict
    assert "no weight update group" in verdict["engines"][engines[1]]["message"], verdict
    assert [greedy(e) for e in engines] == before
    assert httpx.get(gateway + "/v1/weights/group").json()["group_name"] is None
