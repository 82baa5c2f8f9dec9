# One entry point for the common tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help quickstart test test-quickstart test-unit lint format crds check-crds cluster cluster-binaries node-deps images bench clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools>=77" wheel

$(VENV)/.installed-trainer: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[trainer,operator]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed-trainer

quickstart: $(VENV)/.installed-trainer ## install, then run the main job (examples/quickstart.yaml) on CPU with the embedded model
	$(BIN)/rlaif-train pipeline examples/quickstart.yaml --workspace runs/quickstart

test: lint node-deps ## install, lint, then run every test but the quickstart measurement (builds the Kubernetes test binaries and the images on first use)
	@$(BIN)/pytest -m "not quickstart" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

# The shipped quickstart end to end (10-18 min on 2 cores): a measurement of what the quickstart
# claims, kept out of `make test` so that a fresh-machine CI run stays inside its time budget.
test-quickstart: $(VENV)/.installed-dev ## run the shipped quickstart as a test: it learns (a), and the reward-model gate holds
	$(BIN)/pytest -m quickstart $(PYTEST_ARGS)

test-unit: $(VENV)/.installed-dev ## unit tests only (no control plane, no embedded model)
	$(BIN)/pytest tests/unit -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev ## ruff (lint and format), mypy and the import layering (.importlinter); `make format` fixes what ruff can
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: $(VENV)/.installed-dev ## apply ruff's formatting and its safe lint fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

crds: $(VENV)/.installed-dev ## regenerate the CRD (crds/ and the chart's copy) and the spec reference from the pydantic spec
	$(BIN)/python -m rlaif_api.crd -o crds/rlaif.dev_rlaifjobs.yaml
	cp crds/rlaif.dev_rlaifjobs.yaml charts/rlaif-operator/files/crds/rlaif.dev_rlaifjobs.yaml
	$(BIN)/python docs/gen_reference.py

check-crds: $(VENV)/.installed-dev ## fail if crds/ is stale
	$(BIN)/python -m rlaif_api.crd -o crds/rlaif.dev_rlaifjobs.yaml --check

cluster-binaries: $(VENV)/.installed-dev ## build or locate etcd, kube-*, kwok, kubectl, helm
	$(BIN)/python -m tests.cluster build

node-deps: ## install the real test node's and the image build's system packages (apt-get; needs root, idempotent)
	scripts/install-node-deps.sh

images: $(VENV)/.installed-dev node-deps ## build the Dockerfile's operator and trainer images with buildah on local bases (cached)
	$(BIN)/python -m tests.cluster images

cluster: $(VENV)/.installed-dev ## start the local test control plane by hand (prints the kubeconfig path)
	$(BIN)/python -m tests.cluster up

bench: $(VENV)/.installed-dev ## run the benchmarks (see BENCHMARKS.md)
	$(BIN)/python benchmarks/bench_labeling.py
	$(BIN)/python benchmarks/bench_reward.py
	$(BIN)/python benchmarks/bench_rl.py
	$(BIN)/python benchmarks/bench_operator.py

clean: ## remove the virtualenv and local run outputs
	rm -rf $(VENV) runs workspace .pytest_cache .mypy_cache .ruff_cache
