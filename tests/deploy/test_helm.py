"""The Helm chart, rendered and linted by Helm's own Go SDK, validated against the Kubernetes
schemas (kubernetes-validate --strict) and scanned by checkov, for the default values and the
overrides a real install uses; then what the issue asks of the objects, asserted one by one."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from bebop.cli import build_parser
from tests.deploy.conftest import CHART, REPO, deploy_tool, run
from tests.deploy.promql import DASHBOARD, RULES
from tests.procs import BEBOP, free_port

RELEASE, NAMESPACE, KUBE_VERSION = "bebop", "bebop", "1.30.0"
SCENARIOS = {
    "default": {},
    "gpu-tp2": {
        "engines": {
            "mode": "sglang",
            "replicas": 4,
            "model": {"source": "pvc", "pvc": {"claimName": "models"}},
            "sglang": {
                "tensorParallelSize": 2,
                "memFractionStatic": 0.85,
                "extraArgs": ["--context-length=8192"],
            },
            "resources": {
                "requests": {"cpu": "8", "memory": "64Gi"},
                "limits": {"cpu": "32", "memory": "128Gi"},
            },
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "weightsRoots": ["/checkpoints"],
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Bebop"}},
        },
        "networkPolicy": {
            "trainerNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "trainer"}},
            "metricsNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        },
    },
    "cpu-ingress-existing-secret": {
        "engines": {
            "mode": "cpu",
            "model": {
                "source": "image",
                "image": {"repository": "registry.example.com/qwen3-mtp", "tag": "s100"},
            },
        },
        "weightsRoots": ["/checkpoints", "/scratch/rl"],
        "auth": {"existingSecret": "bebop-tokens-from-vault"},
        "gateway": {
            "autoscaling": {"enabled": False},
            "replicas": 3,
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "host": "rollouts.example.com",
                "tls": {"enabled": True, "secretName": "rollouts-tls"},
            },
        },
        "networkPolicy": {
            "ingressNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}
        },
    },
    "hostpath-given-tokens": {
        "engines": {
            "mode": "sglang",
            "model": {"source": "hostPath", "hostPath": {"path": "/mnt/models/qwen3"}},
        },
        "auth": {
            "apiToken": "a-long-random-api-token-1",
            "adminToken": "a-long-random-admin-token-1",
            "engineToken": "a-long-random-engine-token-1",
            "metricsToken": "a-long-random-metrics-token-1",
        },
    },
}
# Values the schema must refuse, with a fragment of Helm's message.
REFUSED = {
    "misspelt-key": ({"gateway": {"replicaz": 2}}, "additional properties 'replicaz' not allowed"),
    "unknown-mode": ({"engines": {"mode": "tpu"}}, "/engines/mode"),
    "sglang-with-demo-model": ({"engines": {"mode": "sglang"}}, "/engines/model/source"),
    "placeholder-token": ({"auth": {"apiToken": "changeme"}}, "/auth/apiToken"),
    "short-token": ({"auth": {"adminToken": "short"}}, "/auth/adminToken"),
    "zero-tp": ({"engines": {"sglang": {"tensorParallelSize": 0}}}, "/engines/sglang/tensorParallelSize"),
    "bad-probe-path": (
        {"engines": {"probes": {"liveness": {"path": "/metrics"}}}},
        "/engines/probes/liveness",
    ),
    "relative-weights-root": ({"weightsRoots": ["ckpt"]}, "/weightsRoots/0"),
}
# checkov findings left on purpose, one line of why each.
CHECKOV_SKIPS = {
    "CKV_K8S_35": "the gateway and the engines read their tokens from the environment (settings.py)",
    "CKV_K8S_43": "images default to the chart's appVersion tag so that images you built install; "
    "*.image.digest pins by digest",
    "CKV_K8S_15": "IfNotPresent keeps locally loaded images (kind, minikube) usable; tags are never moved",
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """{scenario: {"objects": [...], "dir": Path, "lint": {...}, "error": str | None}}."""
    python = deploy_tool("python")
    request = {
        "chart": str(CHART),
        "release": RELEASE,
        "namespace": NAMESPACE,
        "kube_version": f"v{KUBE_VERSION}",
        "scenarios": {
            **SCENARIOS,
            **{k: v for k, (v, _) in REFUSED.items()},
            "writable-rootfs": {"containerSecurityContext": {"readOnlyRootFilesystem": False}},
        },
    }
    r = run([python, str(REPO / "tests" / "deploy" / "helm_render.py")], input=json.dumps(request))
    assert r.returncode == 0, r.stderr
    out = {}
    root = tmp_path_factory.mktemp("rendered")
    for name, entry in json.loads(r.stdout).items():
        folder = root / name
        folder.mkdir()
        objects = []
        for template, text in entry["manifests"].items():
            if not template.endswith(".yaml") or not text.strip():
                continue  # NOTES.txt, and templates switched off
            (folder / template.rsplit("/", 1)[-1]).write_text(text)
            objects += [d for d in yaml.safe_load_all(text) if d]
        out[name] = {"objects": objects, "dir": folder, "lint": entry["lint"], "error": entry["error"]}
    return out


def objs(rendered, scenario: str, kind: str) -> list[dict]:
    return [o for o in rendered[scenario]["objects"] if o["kind"] == kind]


def one(rendered, scenario: str, kind: str, component: str | None = None) -> dict:
    found = [
        o
        for o in objs(rendered, scenario, kind)
        if component is None or o["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"{scenario}: {len(found)} {kind} objects for {component}"
    return found[0]


def container(workload: dict, name: str) -> dict:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


# --- the real tools -------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_renders_and_lints_clean(rendered, scenario):
    entry = rendered[scenario]
    assert entry["error"] is None, entry["error"]
    problems = [m for m in entry["lint"]["messages"] if m["severity"] >= 2] + entry["lint"]["errors"]
    assert not problems, problems


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kubernetes_schemas_strict(rendered, scenario):
    files = sorted(str(p) for p in rendered[scenario]["dir"].glob("*.yaml"))
    r = run([deploy_tool("kubernetes-validate"), "--strict", "-k", KUBE_VERSION, *files])
    assert r.returncode == 0, r.stdout + r.stderr
    # only the Prometheus Operator's kinds have no schema here; they are checked below instead
    skipped = re.findall(r"Couldn't find schema for kind (\w+)", r.stdout + r.stderr)
    assert set(skipped) <= {"ServiceMonitor", "PrometheusRule"}, skipped


def test_kubernetes_schema_check_can_fail(rendered, tmp_path):
    """--strict refuses a misspelt field (without it an unknown field passes)."""
    deployment = copy.deepcopy(one(rendered, "default", "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    r = run([deploy_tool("kubernetes-validate"), "--strict", "-k", KUBE_VERSION, str(path)])
    assert r.returncode != 0 and "imagePullPolicyy" in r.stdout + r.stderr


def _checkov(folder) -> tuple[dict, list[dict]]:
    """checkov's summary and failed checks for the manifests under ``folder``."""
    cmd = [deploy_tool("checkov"), "-d", str(folder), "--framework", "kubernetes", "--quiet", "--compact"]
    cmd += ["--skip-download", "-o", "json", "--skip-check", ",".join(CHECKOV_SKIPS)]
    r = run(cmd)
    report = json.loads(r.stdout)
    report = report if isinstance(report, dict) else report[0]
    return report["summary"], report.get("results", {}).get("failed_checks", [])


def test_checkov(rendered, tmp_path):
    for scenario in SCENARIOS:  # one run over every scenario (checkov does not follow symlinks)
        shutil.copytree(rendered[scenario]["dir"], tmp_path / scenario)
    summary, failed = _checkov(tmp_path)
    failed = [(f["check_id"], f["resource"], f["file_path"]) for f in failed]
    assert not failed, failed
    # it really scanned every object (checkov --framework helm without a helm binary scans nothing)
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= sum(len(rendered[s]["objects"]) for s in SCENARIOS)
    assert summary["passed"] > 500


def test_checkov_catches_a_writable_root_filesystem(rendered):
    """The scan can fail: the same chart with readOnlyRootFilesystem off is flagged."""
    _, failed = _checkov(rendered["writable-rootfs"]["dir"])
    assert {f["check_id"] for f in failed} == {"CKV_K8S_22"}


@pytest.mark.parametrize("scenario", list(REFUSED))
def test_schema_refuses_bad_values(rendered, scenario):
    _, fragment = REFUSED[scenario]
    assert rendered[scenario]["error"] is not None, "rendered although the values are wrong"
    assert "HelmValuesError" in rendered[scenario]["error"]
    assert fragment in rendered[scenario]["error"]


# --- what the objects must be ---------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_is_locked_down(rendered, scenario):
    workloads = objs(rendered, scenario, "Deployment") + objs(rendered, scenario, "StatefulSet")
    assert len(workloads) == 2
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert c["resources"]["limits"] and c["resources"]["requests"], c["name"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gateway_finds_engines_through_the_headless_service(rendered, scenario):
    sts = one(rendered, scenario, "StatefulSet", "engine")
    headless = next(s for s in objs(rendered, scenario, "Service") if s["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    port = headless["spec"]["ports"][0]["port"]
    args = container(one(rendered, scenario, "Deployment", "gateway"), "gateway")["args"]
    assert f"--engine-dns={headless['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port}" in args
    parsed = build_parser().parse_args(args)  # the flags exist in `bebop serve`
    assert parsed.host == "0.0.0.0" and parsed.engine_dns


def _probed_path(probe: dict, port: int) -> str:
    """The engine path a probe checks: an HTTP GET, or the exec that sends the engine token."""
    if "httpGet" in probe:
        return probe["httpGet"]["path"]
    command = probe["exec"]["command"]
    assert command[:2] == ["python3", "-c"] and "BEBOP_ENGINE_TOKEN" in command[2]
    return re.search(rf"http://127\.0\.0\.1:{port}(/\w+)'", command[2]).group(1)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_engine_probes(rendered, scenario):
    c = container(one(rendered, scenario, "StatefulSet", "engine"), "engine")
    port = c["ports"][0]["containerPort"]
    assert _probed_path(c["startupProbe"], port) == "/health_generate"
    assert _probed_path(c["readinessProbe"], port) == "/health_generate"
    assert _probed_path(c["livenessProbe"], port) == "/health"
    assert "httpGet" in c["livenessProbe"]  # /health is the one public engine route
    gw = container(one(rendered, scenario, "Deployment", "gateway"), "gateway")
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_gpu_engines_with_tensor_parallelism(rendered):
    c = container(one(rendered, "gpu-tp2", "StatefulSet", "engine"), "engine")
    assert (
        c["resources"]["limits"]["nvidia.com/gpu"] == 2 and c["resources"]["requests"]["nvidia.com/gpu"] == 2
    )
    assert c["args"][:2] == ["sglang-server", "--"]
    for flag in [
        "--tp-size=2",
        "--speculative-algorithm=NEXTN",
        "--speculative-eagle-topk=1",
        "--speculative-num-draft-tokens=4",
        "--speculative-use-rejection-sampling",
        "--model-path=/models/model",
        "--speculative-draft-model-path=/models/model",
        "--api-key=$(BEBOP_ENGINE_TOKEN)",
        "--mem-fraction-static=0.85",
        "--context-length=8192",
    ]:
        assert flag in c["args"], flag
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["shm"]["mountPath"] == "/dev/shm" and mounts["model"]["readOnly"] is True
    assert one(rendered, "gpu-tp2", "StatefulSet")["spec"]["replicas"] == 4


def test_cpu_engine_command_parses(rendered):
    sts = one(rendered, "cpu-ingress-existing-secret", "StatefulSet", "engine")
    c = container(sts, "engine")
    parsed = build_parser().parse_args(c["args"])
    assert parsed.command == "engine" and parsed.model == "/models/model" and parsed.host == "0.0.0.0"
    assert parsed.weights_root == ["/checkpoints", "/scratch/rl"]
    init = sts["spec"]["template"]["spec"]["initContainers"][0]
    assert init["image"] == "registry.example.com/qwen3-mtp:s100"
    default = container(one(rendered, "default", "StatefulSet", "engine"), "engine")
    assert build_parser().parse_args(default["args"]).model is None  # the image's demo model


def test_tokens(rendered):
    env_refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container(one(rendered, "cpu-ingress-existing-secret", "Deployment"), "gateway")["env"]
        if "valueFrom" in e
    }
    assert set(env_refs) == {
        "BEBOP_API_TOKEN",
        "BEBOP_ADMIN_TOKEN",
        "BEBOP_ENGINE_TOKEN",
        "BEBOP_METRICS_TOKEN",
    }
    assert {r["name"] for r in env_refs.values()} == {"bebop-tokens-from-vault"}
    assert not objs(rendered, "cpu-ingress-existing-secret", "Secret")
    engine_env = container(one(rendered, "default", "StatefulSet"), "engine")["env"]
    assert [e["name"] for e in engine_env if "valueFrom" in e] == ["BEBOP_ENGINE_TOKEN"]  # not the admin's

    generated = {
        k: base64.b64decode(v).decode() for k, v in one(rendered, "default", "Secret")["data"].items()
    }
    assert set(generated) == {
        "BEBOP_API_TOKEN",
        "BEBOP_ADMIN_TOKEN",
        "BEBOP_ENGINE_TOKEN",
        "BEBOP_METRICS_TOKEN",
    }
    assert all(len(v) >= 32 for v in generated.values()) and len(set(generated.values())) == 4
    given = {
        k: base64.b64decode(v).decode()
        for k, v in one(rendered, "hostpath-given-tokens", "Secret")["data"].items()
    }
    assert given["BEBOP_ADMIN_TOKEN"] == "a-long-random-admin-token-1"


def test_network_policies(rendered):
    for scenario in SCENARIOS:
        policies = {
            p["metadata"]["labels"]["app.kubernetes.io/component"]: p
            for p in objs(rendered, scenario, "NetworkPolicy")
        }
        engine_from = policies["engine"]["spec"]["ingress"][0]["from"]
        gateway_labels = one(rendered, scenario, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert engine_from[0]["podSelector"]["matchLabels"].items() <= gateway_labels.items()
        if scenario != "gpu-tp2":
            assert len(engine_from) == 1  # the gateway and nothing else
    gpu = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p
        for p in objs(rendered, "gpu-tp2", "NetworkPolicy")
    }
    peers = gpu["gateway"]["spec"]["ingress"][0]["from"]
    assert peers[0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "trainer"}}
    assert {"namespaceSelector": {}} not in peers  # no longer open to the whole cluster
    assert gpu["engine"]["spec"]["ingress"][0]["from"][1]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }


def test_autoscaling_and_disruption_budgets(rendered):
    hpa = one(rendered, "default", "HorizontalPodAutoscaler")
    deployment = one(rendered, "default", "Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]  # left to the HPA
    assert one(rendered, "cpu-ingress-existing-secret", "Deployment")["spec"]["replicas"] == 3
    assert not objs(rendered, "cpu-ingress-existing-secret", "HorizontalPodAutoscaler")
    for pdb in objs(rendered, "default", "PodDisruptionBudget"):
        workload = one(rendered, "default", "Deployment" if "minAvailable" in pdb["spec"] else "StatefulSet")
        assert (
            pdb["spec"]["selector"]["matchLabels"].items()
            <= workload["spec"]["template"]["metadata"]["labels"].items()
        )


def test_ingress_publishes_only_the_trainer_api(rendered):
    ing = one(rendered, "cpu-ingress-existing-secret", "Ingress")
    paths = ing["spec"]["rules"][0]["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/v1/rollouts", "Exact"), ("/generate", "Exact")]
    assert ing["spec"]["tls"][0]["secretName"] == "rollouts-tls"
    assert not objs(rendered, "default", "Ingress")


def test_monitoring_objects(rendered, tmp_path):
    rule = one(rendered, "gpu-tp2", "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())  # the same rules as compose and the tests
    dashboard = one(rendered, "gpu-tp2", "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Bebop"}
    assert json.loads(dashboard["data"]["bebop.json"]) == json.loads(DASHBOARD.read_text())
    services = objs(rendered, "gpu-tp2", "Service")
    monitors = objs(rendered, "gpu-tp2", "ServiceMonitor")
    assert len(monitors) == 2
    for sm in monitors:
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        matched = [
            s
            for s in services
            if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, sm["metadata"]["name"]
        endpoint = sm["spec"]["endpoints"][0]
        assert endpoint["port"] in {p["name"] for p in matched[0]["spec"]["ports"]}
        if sm["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway":
            assert endpoint["authorization"]["credentials"] == {
                "name": "bebop-tokens",
                "key": "BEBOP_METRICS_TOKEN",
            }
        else:  # SGLang engines leave /metrics open
            assert "authorization" not in endpoint
    for scenario in ("default", "cpu-ingress-existing-secret"):
        assert not objs(rendered, scenario, "ServiceMonitor") and not objs(
            rendered, scenario, "PrometheusRule"
        )


def test_prometheus_rule_spec_passes_promtool(rendered, promtool, tmp_path):
    spec = one(rendered, "gpu-tp2", "PrometheusRule")["spec"]
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(spec))
    r = run([promtool, "check", "rules", str(path)])
    assert r.returncode == 0, r.stdout + r.stderr


# --- documentation --------------------------------------------------------------------------------


def _leaves(values: dict, prefix: str = "") -> set[str]:
    """Dotted keys of every value; maps with chart-defined keys are walked, the rest are leaves."""
    out = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in FREE_FORM:
            out |= _leaves(value, path + ".")
        else:
            out.add(path)
    return out


# Maps whose keys are Kubernetes' or the user's, documented as one value.
FREE_FORM = {"podSecurityContext", "containerSecurityContext", "resources", "labels", "annotations"}


def test_readme_documents_every_value():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme.split("\n## Values\n")[1], re.M))
    leaves = _leaves(values)
    assert not leaves - documented, f"undocumented: {sorted(leaves - documented)}"
    assert not documented - leaves, f"documented but not in values.yaml: {sorted(documented - leaves)}"


def test_readme_lists_every_alert():
    readme = (CHART / "README.md").read_text().split("\n## Values\n")[0]
    alerts = {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    }
    assert set(re.findall(r"^\| `(Bebop\w+)` \|", readme, re.M)) == alerts


def test_bebop_accepts_the_sglang_flags(rendered):
    """`bebop sglang-server` checks the speculative flags before it starts SGLang: the chart's pass.
    The model path is swapped for the demo checkpoint, which has the mtp.* head the check looks for."""
    from bebop.model.demo_path import demo_model_dir
    from bebop.service.sglang.launcher import check_flags

    args = container(one(rendered, "gpu-tp2", "StatefulSet"), "engine")["args"]
    sglang_args = [a.replace("/models/model", str(demo_model_dir())) for a in args[2:]]
    assert check_flags(sglang_args) == []
    assert check_flags([a for a in sglang_args if "rejection" not in a])  # and the check can fail


@pytest.mark.sglang
def test_sglang_parses_the_chart_flags(rendered):
    """SGLang 0.5.23's own argument parser (ServerArgs) accepts every flag the chart passes."""
    python = os.environ.get("BEBOP_SGLANG_PYTHON")
    # the Makefile marks a finished install with .complete (an interrupted one is redone)
    if not python or not (Path(python).parents[1] / ".complete").exists():
        pytest.skip("needs SGLang 0.5.23's venv (BEBOP_SGLANG_PYTHON, installed by make test)")
    args = container(one(rendered, "gpu-tp2", "StatefulSet"), "engine")["args"][2:]
    args = [a.replace("$(BEBOP_ENGINE_TOKEN)", "engine-token-for-the-test") for a in args]
    script = (
        "import argparse, json, sys\n"
        "from sglang.srt.server_args import ServerArgs\n"
        "p = argparse.ArgumentParser()\n"
        "ServerArgs.add_cli_args(p)\n"
        "a = p.parse_args(sys.argv[1:])\n"
        "print(json.dumps([a.tp_size, a.speculative_use_rejection_sampling, a.api_key]))\n"
    )
    r = run([python, "-c", script, *args], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [2, True, "engine-token-for-the-test"]


def test_engine_probe_commands_work_against_a_real_engine(rendered):
    """The exec probes, run as the kubelet would run them, against a real `bebop engine` that
    requires a token: they pass with the pod's token and fail without it."""
    c = container(one(rendered, "default", "StatefulSet"), "engine")
    port = free_port()
    token = "engine-token-for-the-probe-test"
    env = {**os.environ, "BEBOP_ENGINE_TOKEN": token}
    probes = {k: c[f"{k}Probe"]["exec"]["command"] for k in ("startup", "readiness")}
    engine = [BEBOP, "engine", "--port", str(port)]
    with subprocess.Popen(engine, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, "the engine did not start"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            for kind, command in probes.items():
                command = [
                    a.replace(f"127.0.0.1:{c['ports'][0]['containerPort']}", f"127.0.0.1:{port}")
                    for a in command
                ]
                assert run(command, env=env, timeout=60).returncode == 0, kind
                wrong = {**env, "BEBOP_ENGINE_TOKEN": "not-the-engine-token"}
                assert run(command, env=wrong, timeout=60).returncode != 0, kind
        finally:
            proc.terminate()
