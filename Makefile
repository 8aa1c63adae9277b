# The README's two commands are `make serve` and `make test`; each creates .venv/ when missing.
# torch is installed first and pinned: a looser requirement pulls several GB of CUDA wheels.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TORCH_PIN := torch==2.13.0
SGLANG_VERSION := 0.5.23
# SGLang's own rejection-sampling kernel, extracted from its wheel for the peer tests (never committed).
SGLANG_KERNEL := .cache/sglang-$(SGLANG_VERSION)/reject_sampling.py
PYTEST_ARGS ?=
# The real SGLang (about 11 GB, 10 minutes on these machines) lives outside the clone so that every
# clone and every CI run on the machine reuses it; the plugin tests (marker `sglang`) run against it.
SGLANG_VENV ?= $(HOME)/.cache/bebop/sglang-$(SGLANG_VERSION)-venv
SGLANG_READY := $(SGLANG_VENV)/.complete

.PHONY: serve test test-fast lint format bench demo-model clean sglang-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.torch: | $(PY)
	$(PIP) install $(TORCH_PIN)
	@touch $@

$(VENV)/.serve: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[triton]"
	@touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[dev]"
	@touch $@

$(SGLANG_KERNEL): | $(PY)
	@mkdir -p .cache/wheels $(dir $@)
	$(PIP) download --no-deps sglang==$(SGLANG_VERSION) -d .cache/wheels
	$(PY) -c "import glob, zipfile; \
	w = glob.glob('.cache/wheels/sglang-$(SGLANG_VERSION)-*.whl')[0]; \
	open('$@', 'wb').write(zipfile.ZipFile(w).read('sglang/kernels/ops/speculative/reject_sampling.py'))"

# Idempotent: the marker is written last, so an interrupted install is redone from scratch; flock
# keeps two clones on the machine from installing into the same directory at once.
$(SGLANG_READY):
	@mkdir -p $(dir $(SGLANG_VENV))
	flock $(SGLANG_VENV).lock sh -c 'test -f $@ || { rm -rf $(SGLANG_VENV) && \
	  $(PYTHON) -m venv $(SGLANG_VENV) && \
	  $(SGLANG_VENV)/bin/python -m pip --disable-pip-version-check -q install --upgrade pip && \
	  $(SGLANG_VENV)/bin/python -m pip --disable-pip-version-check -q install sglang==$(SGLANG_VERSION) && \
	  touch $@; }'

sglang-venv: $(SGLANG_READY)

# The gateway on :8000 in front of one embedded engine serving the shipped demo model.
serve: $(VENV)/.serve
	$(VENV)/bin/bebop serve --port 8000 --engines 1

# worksteal: a worker that runs out of tests takes queued ones from the other, so a few long tests
# (the Qwen-vocabulary law, SGLang's import) no longer leave one core idle at the end.
test: $(VENV)/.test $(SGLANG_KERNEL) $(SGLANG_READY)
	BEBOP_SGLANG_KERNEL=$(SGLANG_KERNEL) BEBOP_SGLANG_PYTHON=$(SGLANG_VENV)/bin/python $(PY) -m pytest -n 2 --dist worksteal $(PYTEST_ARGS)

test-fast: $(VENV)/.test $(SGLANG_KERNEL)
	BEBOP_SGLANG_KERNEL=$(SGLANG_KERNEL) $(PY) -m pytest -n 2 --dist worksteal -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.test
	$(VENV)/bin/bebop bench kernels

# Trains the shipped demo model (tokenizer, backbone, one MTP head per loss) from fixed seeds.
demo-model: $(VENV)/.test
	$(VENV)/bin/bebop demo-model --build

clean:
	rm -rf $(VENV) .cache .pytest_cache *.egg-info

# Deployment: make deploy-tools, make deploy-check (Docker images, compose, Helm chart, Prometheus, Grafana).
include deploy/deploy.mk

# Load tests (loadtest/): locust lives in its own venv, as its dependencies (gevent, flask) are its own.
LOCUST_VENV := .cache/locust-venv
LOCUST_VERSION := 2.47.0
LOADTEST_ARGS ?=

$(LOCUST_VENV)/.complete:
	$(PYTHON) -m venv $(LOCUST_VENV)
	$(LOCUST_VENV)/bin/python -m pip --disable-pip-version-check -q install locust==$(LOCUST_VERSION)
	@touch $@

.PHONY: locust-venv loadtest-smoke loadtest loadtest-faults loadtest-soak
locust-venv: $(LOCUST_VENV)/.complete

# Headless, 30 s of every user kind against `bebop serve --engines 1` on loopback; non-zero on any
# failed request, lost sample or counter left above zero (part of CI: .ci/run).
loadtest-smoke: $(VENV)/.test $(LOCUST_VENV)/.complete
	OMP_NUM_THREADS=1 $(PY) loadtest/run.py smoke --locust $(LOCUST_VENV)/bin/locust $(LOADTEST_ARGS)

# The full run (2 engines, 32 users, 5 minutes): CSVs and report in .cache/loadtest/full/.
loadtest: $(VENV)/.test $(LOCUST_VENV)/.complete
	OMP_NUM_THREADS=1 $(PY) loadtest/run.py full --locust $(LOCUST_VENV)/bin/locust $(LOADTEST_ARGS)

# Each fault scenario in turn (kill an engine, reload storm, corrupt checkpoint, slow engine).
loadtest-faults: $(VENV)/.test $(LOCUST_VENV)/.complete
	for s in kill-engine reload-storm corrupt-checkpoint slow-engine; do \
	  OMP_NUM_THREADS=1 $(PY) loadtest/run.py $$s --locust $(LOCUST_VENV)/bin/locust $(LOADTEST_ARGS) || exit 1; done

# At least 10,000 rollouts; fails when any process's RSS grows 10% or more after warm-up.
loadtest-soak: $(VENV)/.test $(LOCUST_VENV)/.complete
	OMP_NUM_THREADS=1 $(PY) loadtest/run.py soak --rollouts 10000 --locust $(LOCUST_VENV)/bin/locust $(LOADTEST_ARGS)
