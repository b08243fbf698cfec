# Every target builds the virtual environment it needs from pyproject.toml first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format browser stack-up stack-down stack-status clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "clickscore needs Python 3.11 or newer (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The main job on embedded defaults: local broker, Triton and Postgres, then the worker.
demo: $(STAMP)
	$(BIN)/clickscore demo

# The whole suite against the real stack (the fixtures start and stop it).
test: $(STAMP) browser $(BIN)/promtool
	$(BIN)/python -m pytest

# Debian's chromium, for the browser test of the demo's HTML report. sudo only when not root.
SUDO := $(shell [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null && echo sudo)
browser:
	@command -v chromium >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# promtool, which checks the alert rules and the dashboard's queries, unpacked from Debian's
# prometheus package into the venv: installing the package would also start a Prometheus.
$(BIN)/promtool: | $(STAMP)
	@tmp=$$(mktemp -d) && cd $$tmp && \
		{ apt-get download prometheus 2>/dev/null || \
			{ $(SUDO) apt-get update -qq && apt-get download prometheus; }; } && \
		dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool $(CURDIR)/$@ && \
		cd / && rm -rf $$tmp

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy stream trainer

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

stack-up: $(STAMP)
	$(BIN)/clickscore stack up

stack-down: $(STAMP)
	$(BIN)/clickscore stack down

stack-status: $(STAMP)
	$(BIN)/clickscore stack status

clean: stack-down
	rm -rf $(VENV) .clickscore .pytest_cache .mypy_cache .ruff_cache
