#!/usr/bin/env bash
# The static checks CI runs before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="${KUBERNAUT_STATE_DIR:-$HOME/.local/state/kubernaut}"
export PATH="$PWD/.venv/bin:$STATE/bin:$PATH"

echo "==> generated code matches the protos"
bash scripts/generate.sh
if [ -n "$(git status --porcelain -- gen third_party istio)" ]; then
  git status --short -- gen third_party istio
  echo "generated code drifted from the protos: run 'make generate' and commit" >&2
  exit 1
fi

echo "==> buf lint"
buf lint
if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:proto 2>/dev/null; then
  echo "==> buf breaking against the previous commit on main"
  buf breaking --against ".git#ref=HEAD~1"
fi

echo "==> ruff"
ruff check .
ruff format --check .
echo "==> mypy"
mypy
