# Common commands. Every target sets up what it needs first (fast when warm).
STATE ?= $(or $(KUBERNAUT_STATE_DIR),$(HOME)/.local/state/kubernaut)
export PATH := $(CURDIR)/.venv/bin:$(STATE)/bin:$(PATH)

.PHONY: setup demo up status certs generate check test test-fast

setup:
	@bash scripts/setup.sh

demo: setup  ## everything up, one alert through it, a readiness table and a timeline
	kubernaut demo $(ARGS)

up: setup
	kubernaut up

status:
	kubernaut status

certs: setup
	kubernaut certs init

generate: setup
	bash scripts/generate.sh

check: setup
	bash scripts/check.sh

test: check  ## what CI runs
	pytest -q

test-fast:
	pytest -q tests/unit
