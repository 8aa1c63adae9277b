# Deployment checks (included by the Makefile): the chart, the images, compose, Prometheus and
# Grafana, validated with the real tools. `make test` runs them with everything else.
DEPLOY_VENV := .cache/deploy-venv
DEPLOY_TOOLS := deploy/tools-requirements.txt

.PHONY: deploy-tools deploy-check

$(DEPLOY_VENV)/.installed: $(DEPLOY_TOOLS)
	rm -rf $(DEPLOY_VENV)
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip --disable-pip-version-check -q install -r $(DEPLOY_TOOLS)
	@touch $@

# promtool and a Prometheus server come from Debian's `prometheus` package. Without root (or apt)
# the tests that need them say so and skip.
deploy-tools: $(DEPLOY_VENV)/.installed
	@{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || { \
	  echo "installing Debian's prometheus (promtool, and a server for the end-to-end check)" && \
	  apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; } || \
	  echo "WARNING: could not install prometheus: the tests that need it will be skipped"

# The chart's SGLang flags are also parsed by SGLang itself when its venv (make sglang-venv) is there.
deploy-check: $(VENV)/.test deploy-tools
	BEBOP_SGLANG_PYTHON=$(SGLANG_VENV)/bin/python $(PY) -m pytest -n 2 tests/deploy $(PYTEST_ARGS)

test test-fast: deploy-tools
