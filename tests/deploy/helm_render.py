"""Render and lint the chart with Helm's own Go SDK (PyPI helm-python-sdk), for the tests.

Runs under the deploy venv's Python (helm_python is not in the project's venv):
    .cache/deploy-venv/bin/python tests/deploy/helm_render.py < request.json > answer.json
Request: {"chart", "release", "namespace", "kube_version", "scenarios": {name: values}}.
Answer: {name: {"manifests": {template: text}, "lint": {...}, "error": str | null}}.
"""

from __future__ import annotations

import json
import sys

import helm_python


def main() -> None:
    req = json.load(sys.stdin)
    out = {}
    with helm_python.Chart.load(req["chart"]) as chart:
        for name, values in req["scenarios"].items():
            entry = {"manifests": {}, "lint": None, "error": None}
            try:
                entry["manifests"] = chart.render(values, name=req["release"], namespace=req["namespace"])
            except helm_python.HelmError as err:
                entry["error"] = f"{type(err).__name__}: {err}"
            if entry["error"] is None:
                entry["lint"] = helm_python.lint(
                    req["chart"],
                    values,
                    strict=True,
                    namespace=req["namespace"],
                    kube_version=req["kube_version"],
                )
            out[name] = entry
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
