"""Dockerfiles (hadolint), the compose stack (the compose specification's JSON schema) and what
the images promise: non-root, a health check, commands that `bebop` accepts, and a gateway that
runs without torch or any model code."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
import yaml

from bebop.cli import build_parser
from tests.deploy.conftest import DEPLOY, REPO, deploy_tool, run
from tests.procs import free_port

DOCKERFILES = sorted(p for p in DEPLOY.glob("Dockerfile.*") if p.suffix != ".dockerignore")
COMPOSE = DEPLOY / "compose.yaml"


def _instructions(dockerfile) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    final = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    return [tuple(ln.split(" ", 1)) for ln in lines[final:]]


def _json_arg(instructions, name: str) -> list[str]:
    return yaml.safe_load(next(a for i, a in instructions if i == name))


def test_dockerfiles_found():
    assert [d.name for d in DOCKERFILES] == [
        "Dockerfile.engine",
        "Dockerfile.engine-cpu",
        "Dockerfile.gateway",
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda d: d.name)
def test_hadolint(dockerfile):
    r = run([deploy_tool("hadolint"), "--no-color", str(dockerfile)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_a_careless_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nCMD python app.py\n")
    r = run([deploy_tool("hadolint"), "--no-color", str(bad)])
    assert r.returncode != 0
    assert {"DL3007", "DL3013", "DL3025"} <= set(re.findall(r"DL\d{4}", r.stdout))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda d: d.name)
def test_images_run_as_non_root_with_a_health_check(dockerfile):
    final = _instructions(dockerfile)
    users = [a for i, a in final if i == "USER"]
    assert users == ["10001:10001"]  # the UID the chart's securityContext runs as
    assert any(i == "HEALTHCHECK" for i, _ in final)
    assert _json_arg(final, "ENTRYPOINT") == ["bebop"]


def test_image_commands_are_bebop_commands():
    for name, command in [("Dockerfile.gateway", "serve"), ("Dockerfile.engine-cpu", "engine")]:
        cmd = _json_arg(_instructions(DEPLOY / name), "CMD")
        args = build_parser().parse_args(cmd)
        assert args.command == command and args.host == "0.0.0.0"
    assert _json_arg(_instructions(DEPLOY / "Dockerfile.engine"), "CMD")[0] == "sglang-server"


def test_engine_image_is_sglang_of_the_pinned_version():
    version = re.search(r"^SGLANG_VERSION := (\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    text = (DEPLOY / "Dockerfile.engine").read_text()
    assert re.search(rf"^ARG SGLANG_IMAGE=lmsysorg/sglang:v{re.escape(version)}$", text, re.M)
    assert "SGLANG_PLUGINS=bebop" in text


# --- compose --------------------------------------------------------------------------------------


def test_compose_matches_the_compose_specification():
    r = run([deploy_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_schema_check_can_fail(tmp_path):
    doc = yaml.safe_load(COMPOSE.read_text())
    doc["services"]["gateway"]["ports"] = {"8000": 8000}  # a map where the spec wants a list
    doc["services"]["gateway"]["restart_policy"] = "always"  # no such key
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(doc))
    r = run([deploy_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)])
    assert r.returncode == 1
    assert "restart_policy" in r.stdout and "ports" in r.stdout


def test_compose_stack():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert set(services) == {"gateway", "engine-0", "engine-1", "prometheus", "grafana"}
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
        if "build" in svc:
            assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        assert svc["cap_drop"] == ["ALL"]
    gateway = build_parser().parse_args(services["gateway"]["command"])
    assert gateway.command == "serve" and gateway.host == "0.0.0.0"
    engines = [u.removeprefix("http://") for u in gateway.engine_url]
    assert engines == ["engine-0:30000", "engine-1:30000"]
    for engine in ("engine-0", "engine-1"):
        parsed = build_parser().parse_args(services[engine]["command"])
        assert parsed.command == "engine" and parsed.port == 30000
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in scrape}
    assert targets == {"bebop-gateway": ["gateway:8000"], "bebop-engine": engines}


def test_compose_prometheus_config(promtool):
    r = run([promtool, "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")])
    assert r.returncode == 0, r.stdout + r.stderr


# --- the slim gateway image's promise ---------------------------------------------------------------

# Runs `bebop serve` with the packages the gateway image leaves out made unimportable.
NO_MODEL_CODE = textwrap.dedent(
    """
    import importlib.abc, sys
    LEFT_OUT = set(sys.argv[1].split(","))
    class LeftOut(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in LEFT_OUT:
                raise ImportError(f"{name} is not in the gateway image")
    sys.meta_path.insert(0, LeftOut())
    from bebop.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def test_gateway_runs_without_torch_or_model_code():
    line = re.search(r"requirements\.py ([\w ]+) >", (DEPLOY / "Dockerfile.gateway").read_text()).group(1)
    left_out = {*line.split(), "triton", "transformers"}
    assert {"torch", "numpy"} <= left_out
    port = free_port()
    cmd = [sys.executable, "-c", NO_MODEL_CODE, ",".join(sorted(left_out))]
    cmd += ["serve", "--port", str(port), "--engine-url", f"http://127.0.0.1:{free_port()}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 503  # no engine
        assert "bebop_engine_healthy" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        # the image's own HEALTHCHECK command, pointed at this gateway
        check = next(a for i, a in _instructions(DEPLOY / "Dockerfile.gateway") if i == "HEALTHCHECK")
        command = yaml.safe_load(check.split(" CMD ", 1)[1])
        command = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in command]
        command[0] = sys.executable
        assert run(command, timeout=30).returncode == 0
    finally:
        proc.terminate()
        proc.wait(timeout=15)
