# Common commands. Every target sets up what it needs first (fast when warm).
STATE ?= $(or $(KUBERNAUT_STATE_DIR),$(HOME)/.local/state/kubernaut)
export PATH := $(CURDIR)/.venv/bin:$(STATE)/bin:$(PATH)

.PHONY: setup demo up status certs generate check test test-fast image

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
	pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test-fast:
	pytest -q tests/unit

# The one container image of all components (Containerfile), with buildah; IMAGE_BASE=python
# (the public python:3.11-slim-bookworm), debian (made here by mmdebstrap, no registry needed)
# or auto (python when its registry answers, else debian). Needs only the Debian packages
# (buildah, mmdebstrap), not the rest of setup.
IMAGE_BASE ?= auto
image:
	@if [ "$$(id -u)" = 0 ]; then bash scripts/install-debian-packages.sh; else sudo bash scripts/install-debian-packages.sh; fi
	bash scripts/build-image.sh --base $(IMAGE_BASE)
