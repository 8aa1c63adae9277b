"""The distributed weight push: a separate trainer process broadcasts new weights into an engine
over torch.distributed (gloo), and a bad push is refused with the old weights still serving."""

import subprocess
import sys
import textwrap

import httpx

from tests.procs import free_port, running

TRAINER = textwrap.dedent(
    """
    import json, sys, torch
    from bebop.model import load_model, save_model
    from bebop.service.weight_push import WeightBroadcaster, WeightPushError

    engine_url, model_dir, out_dir, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    model = load_model(model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # "one training step": every tensor moves, head included
    save_model(model, out_dir)  # the same weights on disk, for the comparison
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to the embeddings
    with WeightBroadcaster([engine_url], master_port=port) as push:
        good = push.push(state, "v7")
        bad = dict(state)
        bad["model.norm.weight"] = torch.full_like(bad["model.norm.weight"], float("nan"))
        try:
            push.push(bad, "v8")
            refused = None
        except WeightPushError as err:
            refused = err.details
    print(json.dumps({"good": good, "refused": refused}))
    """
)


def test_trainer_broadcast_updates_the_engine_and_bad_weights_are_refused(quick_model, tmp_path):
    port = free_port()
    body = {
        "input_ids": [5, 6, 7],
        "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True},
    }
    engine = ["engine", "--model", str(quick_model), "--port", str(port), "--weights-root", str(tmp_path)]
    with running(engine, port) as url:
        before = httpx.post(url + "/generate", json=body, timeout=60).json()["output_ids"]
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                TRAINER,
                url,
                str(quick_model),
                str(tmp_path / "pushed"),
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
        assert result["good"][url]["success"] and result["good"][url]["weight_version"] == "v7"
        assert result["refused"] is not None and "NaN" in result["refused"][url]["message"]
        assert httpx.get(url + "/model_info").json()["weight_version"] == "v7"
        pushed = httpx.post(url + "/generate", json=body, timeout=60).json()
        assert pushed["meta_info"]["weight_version"] == "v7"
        # the pushed weights are exactly the ones the trainer saved: reloading them changes nothing
        r = httpx.post(
            url + "/update_weights_from_disk",
            json={"model_path": str(tmp_path / "pushed"), "weight_version": "v7-disk"},
        )
        assert r.json()["success"], r.text
        from_disk = httpx.post(url + "/generate", json=body, timeout=60).json()["output_ids"]
        assert from_disk == pushed["output_ids"]
        # and they differ from the original weights (the update was real)
        r = httpx.post(
            url + "/update_weights_from_disk", json={"model_path": str(quick_model), "weight_version": "v0"}
        )
        assert httpx.post(url + "/generate", json=body, timeout=60).json()["output_ids"] == before
        assert pushed["output_ids"] != before


def test_update_without_a_group_is_refused(quick_model):
    port = free_port()
    with running(["engine", "--model", str(quick_model), "--port", str(port)], port) as url:
        r = httpx.post(
            url + "/update_weights_from_distributed",
            json={"names": ["x"], "dtypes": ["float32"], "shapes": [[1]], "group_name": "g"},
        )
        assert r.status_code == 400 and "init_weights_update_group" in r.json()["message"]
        r = httpx.post(url + "/init_weights_update_group", json={"master_address": "127.0.0.1"})
        assert r.status_code == 400
