#!/usr/bin/env bash
# Builds Helm and gathers the CRDs that the chart is checked against, from Go modules
# only (no prebuilt downloads, no chart repositories):
#   helm   tools/helm: helm.sh/helm/v4's own cmd/helm, unchanged (a `tool` directive),
#          with the version stamped as Helm's Makefile does for a release tag
#   CRDs   the CustomResourceDefinition YAML files that the modules pinned in
#          tools/helm/crds.txt carry (Istio, prometheus-operator, cert-manager,
#          CloudNativePG), copied out of the Go module cache unchanged
#
# Output:
#   $STATE/helm/<version>-<key>/bin/helm   linked into $STATE/bin/helm
#   $STATE/crds/<name>-<version>/*.yaml    one directory per crds.txt line
# Each is stamped (.complete) and keyed by what changes it (the go.mod/go.sum, the Go
# version and the build flags; the crds.txt line), so a warm run takes well under a
# second. Cold, on 2 busy cores: ~10 s of module downloads, then helm ~4.5 min (~1,200
# packages; the build cache grows by ~1.2 GB) and the CRDs ~10 s (~15 MB of modules).
# Only the newest 3 Helm builds are kept in $STATE/helm.
#
# Usage: scripts/build-helm.sh [--print-bin-dir] [--force] [--crds-only | --helm-only]
#   --print-bin-dir  print Helm's bin directory on stdout (progress goes to stderr)
#   --force          rebuild Helm and copy the CRDs again even when stamped
#   --crds-only      only gather the CRDs;  --helm-only  only build Helm
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

STATE="${KUBERNAUT_STATE_DIR:-$HOME/.local/state/kubernaut}"
HELM_DIR="$ROOT/tools/helm"
CRDS_TXT="$HELM_DIR/crds.txt"

PRINT_BIN_DIR=0
FORCE=0
DO_HELM=1
DO_CRDS=1
for arg in "$@"; do
  case "$arg" in
    --print-bin-dir) PRINT_BIN_DIR=1 ;;
    --force) FORCE=1 ;;
    --crds-only) DO_HELM=0 ;;
    --helm-only) DO_CRDS=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-helm: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# Progress goes to stderr so that --print-bin-dir leaves stdout clean.
step() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'build-helm: error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || fail "'go' is not on PATH (Go 1.26.8 or newer is needed)"
for f in "$HELM_DIR/go.mod" "$HELM_DIR/go.sum" "$CRDS_TXT"; do
  [ -f "$f" ] || fail "missing $f"
done

HELM_VERSION="$(awk '$1 == "helm.sh/helm/v4" { print $2; exit } $1 == "require" && $2 == "helm.sh/helm/v4" { print $3; exit }' "$HELM_DIR/go.mod")"
[ -n "$HELM_VERSION" ] || fail "could not read the helm.sh/helm/v4 version from tools/helm/go.mod"

GO_VERSION="$(go env GOVERSION)"
GO_NEED="$(awk '$1 == "go" { print $2; exit }' "$HELM_DIR/go.mod")"
if [ "$(printf '%s\n%s\n' "go$GO_NEED" "$GO_VERSION" | sort -V | head -n1)" != "go$GO_NEED" ]; then
  fail "tools/helm needs go$GO_NEED or newer, 'go' is $GO_VERSION"
fi

BUILD_FLAGS=(-trimpath -buildvcs=false)
export CGO_ENABLED=0
# As Helm's Makefile does for a release tag: `helm version` then says v4.3.2, not v4.3.
LDFLAGS="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
LDFLAGS+=" -X helm.sh/helm/v4/internal/version.metadata= -X helm.sh/helm/v4/internal/version.gitTreeState=clean"

mkdir -p "$STATE/bin"
T0=$SECONDS

# What an interrupted or failed run leaves behind: the progress ticker, a half-made directory.
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

# ---------------------------------------------------------------- helm
build_helm() {
  local hash key out bin log
  # Everything that changes the output goes into the key.
  hash="$(
    {
      printf '%s\n' "$GO_VERSION" "$(go env GOOS GOARCH)" "CGO_ENABLED=$CGO_ENABLED" "${BUILD_FLAGS[*]}" "$LDFLAGS"
      (cd "$HELM_DIR" && sha256sum go.mod go.sum)
    } | sha256sum | cut -c1-12
  )"
  key="$HELM_VERSION-$hash"
  out="$STATE/helm/$key"
  bin="$out/bin"
  HELM_BIN_DIR="$bin"

  if [ "$FORCE" = 0 ] && [ -f "$out/.complete" ]; then
    ln -sfn "$bin/helm" "$STATE/bin/helm"
    step "helm $HELM_VERSION: up to date in $bin"
    return 0
  fi

  # One build at a time per state dir; a second caller waits, then finds it built.
  mkdir -p "$STATE/helm"
  exec 8>"$STATE/helm/.build.lock"
  if command -v flock >/dev/null 2>&1; then
    flock -n 8 || { step "another build-helm.sh is building; waiting for it"; flock 8; }
    if [ "$FORCE" = 0 ] && [ -f "$out/.complete" ]; then
      ln -sfn "$bin/helm" "$STATE/bin/helm"
      step "helm $HELM_VERSION: built by the other run: $bin"
      return 0
    fi
  fi

  local tmp="$out.tmp.$$" t0=$SECONDS
  log="$STATE/helm/$key.build.log"
  mkdir -p "$tmp/bin"
  : >"$log"
  CLEANUP_DIR="$tmp"
  step "building helm $HELM_VERSION into $out (log: $log; GOCACHE=$(go env GOCACHE))"
  # go build -v names each package it compiles: count them as progress.
  ( while sleep 30; do
      printf '    ... helm: %d packages compiled, %ds\n' "$(grep -vc '^#\|^go: ' "$log" 2>/dev/null || true)" $((SECONDS - t0)) >&2
    done ) &
  TICKER_PID=$!
  if ! (cd "$HELM_DIR" && go build -v "${BUILD_FLAGS[@]}" -ldflags="$LDFLAGS" -o "$tmp/bin/helm" helm.sh/helm/v4/cmd/helm) >>"$log" 2>&1; then
    stop_ticker
    echo "---- last lines of $log ----" >&2
    tail -n 40 "$log" >&2
    fail "building helm failed (full log: $log)"
  fi
  stop_ticker
  step "built helm in $((SECONDS - t0))s ($(du -h "$tmp/bin/helm" | cut -f1))"

  local got
  got="$("$tmp/bin/helm" version --template '{{.Version}}' 2>&1)" || fail "helm version failed: $got"
  [ "$got" = "$HELM_VERSION" ] || fail "helm version says '$got', want '$HELM_VERSION'"
  printf 'HELM_VERSION=%s\nGO_VERSION=%s\nKEY=%s\n' "$HELM_VERSION" "$GO_VERSION" "$key" >"$tmp/versions.env"
  rm -rf "$out"
  touch "$tmp/.complete"
  mv "$tmp" "$out"
  CLEANUP_DIR=""
  ln -sfn "$bin/helm" "$STATE/bin/helm"
  # Keep the newest 3 builds.
  # shellcheck disable=SC2012
  ls -1dt "$STATE"/helm/v*/ 2>/dev/null | tail -n +4 | while read -r old; do
    old="${old%/}"
    [ "$old" = "$out" ] && continue
    step "removing an older helm build: $old"
    rm -rf "$old" "$old.build.log"
  done
}

# ---------------------------------------------------------------- CRDs
# crds.txt: NAME MODULE VERSION PATH... (paths inside the module; a directory means
# every *.yaml in it). The destination is keyed by NAME-VERSION and stamped with a
# hash of the line, so that changing the file list copies again.
gather_crds() {
  local name module version paths line stamp dest dir tmp n
  local -a files
  while read -r line; do
    line="${line%%#*}"
    [ -n "${line// /}" ] || continue
    read -r name module version paths <<<"$line"
    [ -n "$paths" ] || fail "tools/helm/crds.txt: '$line' needs NAME MODULE VERSION PATH..."
    dest="$STATE/crds/$name-$version"
    stamp="$(printf '%s\n' "$line" | sha256sum | cut -c1-12)"
    if [ "$FORCE" = 0 ] && [ "$(cat "$dest/.complete" 2>/dev/null)" = "$stamp" ]; then
      step "CRDs $name $version: up to date in $dest"
      continue
    fi
    step "CRDs $name: go mod download $module@$version"
    # Outside any module: the download must not touch a go.mod of ours.
    dir="$(cd "$STATE" && go mod download -json "$module@$version" | awk -F'"' '$2 == "Dir" { print $4 }')" \
      || fail "could not download $module@$version from the Go module proxy (GOPROXY=$(go env GOPROXY))"
    [ -n "$dir" ] && [ -d "$dir" ] || fail "go mod download gave no directory for $module@$version"
    tmp="$dest.tmp.$$"
    CLEANUP_DIR="$tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    n=0
    for p in $paths; do
      if [ -d "$dir/$p" ]; then
        files=("$dir/$p"/*.yaml)
      else
        files=("$dir/$p")
      fi
      for f in "${files[@]}"; do
        [ -f "$f" ] || fail "$module@$version has no $p (tools/helm/crds.txt)"
        grep -q '^kind: CustomResourceDefinition' "$f" || fail "$module@$version: $p holds no CustomResourceDefinition"
        # The module cache is read-only; the copies need not be.
        install -m 0644 "$f" "$tmp/$(basename "$f")"
        n=$((n + $(grep -c '^kind: CustomResourceDefinition' "$f")))
      done
    done
    printf 'NAME=%s\nMODULE=%s\nVERSION=%s\n' "$name" "$module" "$version" >"$tmp/source.env"
    printf '%s\n' "$stamp" >"$tmp/.complete"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    CLEANUP_DIR=""
    step "CRDs $name $version: $n definitions in $dest"
  done <"$CRDS_TXT"
}

HELM_BIN_DIR=""
[ "$DO_HELM" = 1 ] && build_helm
[ "$DO_CRDS" = 1 ] && gather_crds
[ $((SECONDS - T0)) -gt 2 ] && step "build-helm done in $((SECONDS - T0))s"
[ "$PRINT_BIN_DIR" = 1 ] && [ -n "$HELM_BIN_DIR" ] && printf '%s\n' "$HELM_BIN_DIR"
exit 0
