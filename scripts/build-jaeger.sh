#!/usr/bin/env bash
# Builds Jaeger (v2: an OpenTelemetry Collector distribution with Jaeger's storage and
# query extensions), the dev stack's trace backend, from its Go module only (no prebuilt
# downloads, no images):
#   jaeger  tools/jaeger: github.com/jaegertracing/jaeger's own cmd/jaeger, unchanged (a
#           `tool` directive), with the version stamped as Jaeger's Makefile does for a
#           release tag. The Go module carries no UI assets (they are built with npm
#           upstream), so the UI at /  is Jaeger's placeholder page; the query API
#           (/api/traces/<id>, /api/v3/...) is whole.
#
# Output:
#   $STATE/jaeger/<version>-<key>/bin/jaeger   linked into $STATE/bin/jaeger
# Stamped (.complete) and keyed by what changes it (the go.mod/go.sum, the Go version and
# the build flags), so a warm run takes well under a second. Cold, on 2 busy cores with an
# empty Go build cache: ~13.5 min (~25 s of module downloads, ~2,300 packages; the build
# cache grows by ~1.6 GB).
# Only the newest 3 builds are kept in $STATE/jaeger.
#
# Usage: scripts/build-jaeger.sh [--print-bin-dir] [--force]
#   --print-bin-dir  print Jaeger's bin directory on stdout (progress goes to stderr)
#   --force          rebuild even when stamped
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

STATE="${KUBERNAUT_STATE_DIR:-$HOME/.local/state/kubernaut}"
JAEGER_DIR="$ROOT/tools/jaeger"
MODULE=github.com/jaegertracing/jaeger

PRINT_BIN_DIR=0
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --print-bin-dir) PRINT_BIN_DIR=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-jaeger: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# Progress goes to stderr so that --print-bin-dir leaves stdout clean.
step() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'build-jaeger: error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || fail "'go' is not on PATH (Go 1.26.8 or newer is needed)"
for f in "$JAEGER_DIR/go.mod" "$JAEGER_DIR/go.sum"; do
  [ -f "$f" ] || fail "missing $f"
done

JAEGER_VERSION="$(awk -v m="$MODULE" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$JAEGER_DIR/go.mod")"
[ -n "$JAEGER_VERSION" ] || fail "could not read the $MODULE version from tools/jaeger/go.mod"

GO_VERSION="$(go env GOVERSION)"
GO_NEED="$(awk '$1 == "go" { print $2; exit }' "$JAEGER_DIR/go.mod")"
if [ "$(printf '%s\n%s\n' "go$GO_NEED" "$GO_VERSION" | sort -V | head -n1)" != "go$GO_NEED" ]; then
  fail "tools/jaeger needs go$GO_NEED or newer, 'go' is $GO_VERSION"
fi

BUILD_FLAGS=(-trimpath -buildvcs=false)
export CGO_ENABLED=0
# As Jaeger's Makefile (scripts/makefiles/BuildInfo.mk) does for a release: `jaeger
# version` then names the release instead of an empty string.
LDFLAGS="-s -w -X $MODULE/internal/version.latestVersion=$JAEGER_VERSION"

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
    (cd "$JAEGER_DIR" && sha256sum go.mod go.sum)
  } | sha256sum | cut -c1-12
)"
key="$JAEGER_VERSION-$hash"
out="$STATE/jaeger/$key"
bin="$out/bin"

done_msg() {
  ln -sfn "$bin/jaeger" "$STATE/bin/jaeger"
  step "$1"
  [ "$PRINT_BIN_DIR" = 1 ] && printf '%s\n' "$bin"
  exit 0
}

[ "$FORCE" = 0 ] && [ -f "$out/.complete" ] && done_msg "jaeger $JAEGER_VERSION: up to date in $bin"

# One build at a time per state dir; a second caller waits, then finds it built.
mkdir -p "$STATE/jaeger"
exec 8>"$STATE/jaeger/.build.lock"
if command -v flock >/dev/null 2>&1; then
  flock -n 8 || { step "another build-jaeger.sh is building; waiting for it"; flock 8; }
  [ "$FORCE" = 0 ] && [ -f "$out/.complete" ] && done_msg "jaeger $JAEGER_VERSION: built by the other run: $bin"
fi

tmp="$out.tmp.$$"
t0=$SECONDS
log="$STATE/jaeger/$key.build.log"
mkdir -p "$tmp/bin"
: >"$log"
CLEANUP_DIR="$tmp"
step "building jaeger $JAEGER_VERSION into $out (log: $log; GOCACHE=$(go env GOCACHE))"
# go build -v names each package it compiles: count them as progress.
( while sleep 30; do
    printf '    ... jaeger: %d packages compiled, %ds\n' "$(grep -vc '^#\|^go: ' "$log" 2>/dev/null || true)" $((SECONDS - t0)) >&2
  done ) &
TICKER_PID=$!
if ! (cd "$JAEGER_DIR" && go build -v "${BUILD_FLAGS[@]}" -ldflags="$LDFLAGS" -o "$tmp/bin/jaeger" "$MODULE/cmd/jaeger") >>"$log" 2>&1; then
  stop_ticker
  echo "---- last lines of $log ----" >&2
  tail -n 40 "$log" >&2
  fail "building jaeger failed (full log: $log)"
fi
stop_ticker
step "built jaeger in $((SECONDS - t0))s ($(du -h "$tmp/bin/jaeger" | cut -f1))"

got="$("$tmp/bin/jaeger" version 2>&1)" || fail "jaeger version failed: $got"
case "$got" in
  *"\"gitVersion\":\"$JAEGER_VERSION\""*) ;;
  *) fail "jaeger version says '$got', want gitVersion $JAEGER_VERSION" ;;
esac
printf 'JAEGER_VERSION=%s\nGO_VERSION=%s\nKEY=%s\n' "$JAEGER_VERSION" "$GO_VERSION" "$key" >"$tmp/versions.env"
rm -rf "$out"
touch "$tmp/.complete"
mv "$tmp" "$out"
CLEANUP_DIR=""
# Keep the newest 3 builds.
# shellcheck disable=SC2012
ls -1dt "$STATE"/jaeger/v*/ 2>/dev/null | tail -n +4 | while read -r old; do
  old="${old%/}"
  [ "$old" = "$out" ] && continue
  step "removing an older jaeger build: $old"
  rm -rf "$old" "$old.build.log"
done
[ $((SECONDS - T0)) -gt 2 ] && step "build-jaeger done in $((SECONDS - T0))s"
done_msg "jaeger $JAEGER_VERSION: ready in $bin"
