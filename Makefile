# The two front-door commands: `make sandbox` (the main job, no AWS account) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST_SCRIPTS := userdata/scripts/cmc-relay-fetch-secret userdata/scripts/cmc-relay-verify userdata/scripts/cmc-relay-drain \
	userdata/scripts/cmc-relay-install-agent userdata/scripts/cmc-relay-bootstrap \
	userdata/scripts/cmc-relay-metrics userdata/scripts/cmc-relay-apply \
	userdata/scripts/cmc-relay-reboot

.PHONY: sandbox test bench lint system-packages venv clean

sandbox: system-packages venv  ## boot the relay host locally and relay a message (root)
	$(BIN)/python -m sandbox

test: system-packages venv lint  ## every test: unit, mocks, real Postfix/dnsmasq/cloud-init
	$(BIN)/pytest

bench: system-packages venv  ## throughput, recovery and DNS against their bounds (root)
	$(BIN)/python -m benchmarks

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	for entry in __main__.py provider/__main__.py $(HOST_SCRIPTS); do $(BIN)/mypy $$entry || exit 1; done
	cd tests/consumer && $(CURDIR)/$(BIN)/mypy --explicit-package-bases __main__.py run_under_mocks.py components userdata
	shellcheck userdata/scripts/cmc-relay-setup userdata/scripts/cmc-relay-inbound-cert \
		userdata/scripts/cmc-relay-queue-volume \
		scripts/install-system-packages .ci/run

system-packages:
	scripts/install-system-packages

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
