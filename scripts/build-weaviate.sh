#!/usr/bin/env bash
# Builds Weaviate, the vector database the tests (and `kubernaut up --vector-store weaviate`) run on
# loopback, from its Go module only (no prebuilt downloads, no images):
#   weaviate-server  tools/weaviate: github.com/weaviate/weaviate's own
#           cmd/weaviate-server, unchanged (a `tool` directive), built as upstream's
#           Makefile builds it (CGO_ENABLED=0, -tags netgo). Its version needs no ldflags:
#           the server reads it from its embedded OpenAPI spec. Upstream's go.mod has no
#           `replace` directives, so tools/weaviate needs none either.
#
# Output:
#   $STATE/weaviate/<version>-<key>/bin/weaviate-server   linked into $STATE/bin/weaviate-server
# Stamped (.complete) and keyed by what changes it (the go.mod/go.sum, the Go version and
# the build flags), so a warm run takes well under a second. Cold, on 2 cores with an empty
# Go build cache: ~3 min (186 s for ~1,700 packages, 290 s of CPU; before that ~30 s of
# module downloads; the build cache grows by ~1.4 GB). The binary is ~125 MB (stripped).
# Only the newest 3 builds are kept in $STATE/weaviate.
#
# Usage: scripts/build-weaviate.sh [--print-bin-dir] [--force]
#   --print-bin-dir  print Weaviate's bin directory on stdout (progress goes to stderr)
#   --force          rebuild even when stamped
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

STATE="${KUBERNAUT_STATE_DIR:-$HOME/.local/state/kubernaut}"
WEAVIATE_DIR="$ROOT/tools/weaviate"
MODULE=github.com/weaviate/weaviate

PRINT_BIN_DIR=0
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --print-bin-dir) PRINT_BIN_DIR=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-weaviate: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# Progress goes to stderr so that --print-bin-dir leaves stdout clean.
step() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'build-weaviate: error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || fail "'go' is not on PATH (Go 1.26.8 or newer is needed)"
for f in "$WEAVIATE_DIR/go.mod" "$WEAVIATE_DIR/go.sum"; do
  [ -f "$f" ] || fail "missing $f"
done

WEAVIATE_VERSION="$(awk -v m="$MODULE" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$WEAVIATE_DIR/go.mod")"
[ -n "$WEAVIATE_VERSION" ] || fail "could not read the $MODULE version from tools/weaviate/go.mod"

GO_VERSION="$(go env GOVERSION)"
GO_NEED="$(awk '$1 == "go" { print $2; exit }' "$WEAVIATE_DIR/go.mod")"
if [ "$(printf '%s\n%s\n' "go$GO_NEED" "$GO_VERSION" | sort -V | head -n1)" != "go$GO_NEED" ]; then
  fail "tools/weaviate needs go$GO_NEED or newer, 'go' is $GO_VERSION"
fi

# As upstream's Makefile (`make weaviate`): static, pure Go.
BUILD_FLAGS=(-trimpath -buildvcs=false -tags netgo)
export CGO_ENABLED=0
LDFLAGS="-s -w"

mkdir -p "$STATE/bin"
T0=$SECONDS

TICKER_PID=""
CLEANUP_DIR=""
stop_ticker() {
  if [ -n "$TICKER_PID" ]; then kill "$TICKER_PID" 2>/dev/null || true; wait "$TICKER_PID" 2>/dev/null || true; fi
  TICKER_PID=""
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  stop_ticker
  if [ -n "$CLEANUP_DIR" ]; then rm -rf "$CLEANUP_DIR"; fi
}
trap cleanup EXIT

hash="$(
  {
    printf '%s\n' "$GO_VERSION" "$(go env GOOS GOARCH)" "CGO_ENABLED=$CGO_ENABLED" "${BUILD_FLAGS[*]}" "$LDFLAGS"
    (cd "$WEAVIATE_DIR" && sha256sum go.mod go.sum)
  } | sha256sum | cut -c1-12
)"
key="$WEAVIATE_VERSION-$hash"
out="$STATE/weaviate/$key"
bin="$out/bin"

done_msg() {
  ln -sfn "$bin/weaviate-server" "$STATE/bin/weaviate-server"
  step "$1"
  [ "$PRINT_BIN_DIR" = 1 ] && printf '%s\n' "$bin"
  exit 0
}

[ "$FORCE" = 0 ] && [ -f "$out/.complete" ] && done_msg "weaviate $WEAVIATE_VERSION: up to date in $bin"

# One build at a time per state dir; a second caller waits, then finds it built.
mkdir -p "$STATE/weaviate"
exec 8>"$STATE/weaviate/.build.lock"
if command -v flock >/dev/null 2>&1; then
  flock -n 8 || { step "another build-weaviate.sh is building; waiting for it"; flock 8; }
  [ "$FORCE" = 0 ] && [ -f "$out/.complete" ] && done_msg "weaviate $WEAVIATE_VERSION: built by the other run: $bin"
fi

tmp="$out.tmp.$$"
t0=$SECONDS
log="$STATE/weaviate/$key.build.log"
mkdir -p "$tmp/bin"
: >"$log"
CLEANUP_DIR="$tmp"
step "building weaviate $WEAVIATE_VERSION into $out (log: $log; GOCACHE=$(go env GOCACHE))"
# go build -v names each package it compiles: count them as progress.
( while sleep 30; do
    printf '    ... weaviate: %d packages compiled, %ds\n' "$(grep -vc '^#\|^go: ' "$log" 2>/dev/null || true)" $((SECONDS - t0)) >&2
  done ) &
TICKER_PID=$!
if ! (cd "$WEAVIATE_DIR" && go build -v "${BUILD_FLAGS[@]}" -ldflags="$LDFLAGS" -o "$tmp/bin/weaviate-server" "$MODULE/cmd/weaviate-server") >>"$log" 2>&1; then
  stop_ticker
  echo "---- last lines of $log ----" >&2
  tail -n 40 "$log" >&2
  fail "building weaviate failed (full log: $log)"
fi
stop_ticker
step "built weaviate in $((SECONDS - t0))s ($(du -h "$tmp/bin/weaviate-server" | cut -f1))"

# The server has no version flag: it reads its version from the OpenAPI spec embedded in
# the binary (info.version), so check that the spec is there and names the release, and
# that the binary runs (--help parses the flags and exits 0 without starting anything).
"$tmp/bin/weaviate-server" --help >/dev/null 2>&1 || fail "weaviate-server --help failed"
grep -qaF "\"version\": \"${WEAVIATE_VERSION#v}\"" "$tmp/bin/weaviate-server" \
  || fail "weaviate-server's embedded spec does not name version ${WEAVIATE_VERSION#v}"
printf 'WEAVIATE_VERSION=%s\nGO_VERSION=%s\nKEY=%s\n' "$WEAVIATE_VERSION" "$GO_VERSION" "$key" >"$tmp/versions.env"
rm -rf "$out"
touch "$tmp/.complete"
mv "$tmp" "$out"
CLEANUP_DIR=""
# Keep the newest 3 builds.
# shellcheck disable=SC2012
ls -1dt "$STATE"/weaviate/v*/ 2>/dev/null | tail -n +4 | while read -r old; do
  old="${old%/}"
  [ "$old" = "$out" ] && continue
  step "removing an older weaviate build: $old"
  rm -rf "$old" "$old.build.log"
done
[ $((SECONDS - T0)) -gt 2 ] && step "build-weaviate done in $((SECONDS - T0))s"
done_msg "weaviate $WEAVIATE_VERSION: ready in $bin"
