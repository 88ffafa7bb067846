#!/usr/bin/env bash
# The static checks CI runs before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="${KUBERNAUT_STATE_DIR:-$HOME/.local/state/kubernaut}"
export PATH="$PWD/.venv/bin:$STATE/bin:$PATH"

echo "==> generated code matches the protos"
# Compare the tree before and after regenerating, whatever git's index holds.
before=$(mktemp -d)
trap 'rm -rf "$before"' EXIT
cp -r gen third_party istio docs helm "$before/"
bash scripts/generate.sh
for dir in gen third_party istio docs helm; do
  if ! diff -r -x __pycache__ "$before/$dir" "$dir" >/dev/null; then
    { diff -r -x __pycache__ "$before/$dir" "$dir" || true; } | head -20
    echo "generated code in $dir/ drifted from its sources: run 'make generate' and commit" >&2
    exit 1
  fi
done

echo "==> buf lint"
buf lint
# The compatibility promise (README: Calling Kubernaut from your code): nothing a v1 client
# relies on changes after a release. Against the last release tag (v1.2.3); without one,
# against main (what a branch would merge into), and on main itself its previous commit.
against="" what=""
if tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null); then
  against="$tag" what="the last release, $tag"
elif git rev-parse -q --verify refs/heads/main >/dev/null \
    && [ "$(git rev-parse HEAD)" != "$(git rev-parse main)" ]; then
  against="main" what="main"
elif git rev-parse -q --verify HEAD~1 >/dev/null; then
  against="HEAD~1" what="the previous commit (no release yet)"
fi
if [ -n "$against" ] && git cat-file -e "$against:proto" 2>/dev/null; then
  echo "==> buf breaking against $what"
  buf breaking --against ".git#ref=$(git rev-parse "$against")"
fi

echo "==> ruff"
ruff check .
ruff format --check .
echo "==> mypy"
# Its cache under the state directory, by mypy's version: a warm run (even from a fresh
# clone: entries whose file changed are found by their hash) takes seconds, not half a minute.
MYPY_VERSION=$(python -c 'import mypy.version; print(mypy.version.__version__)')
mypy --cache-dir "$STATE/cache/mypy-$MYPY_VERSION"
