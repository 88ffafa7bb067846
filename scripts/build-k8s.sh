#!/usr/bin/env bash
# Builds the local Kubernetes control plane that kubernaut/devstack/kube.py runs,
# from Go modules only (no prebuilt downloads):
#   kubernaut-k8s       tools/k8s/controlplane: kube-apiserver,
#                       kube-controller-manager, kube-scheduler, etcd, kwok
#                       in one multi-call binary (symlinks pick the component)
#   kube-state-metrics  tools/k8s/kube-state-metrics: upstream main, unchanged
#
# Output: $STATE/k8s/<key>/bin/, where <key> names the pinned versions and a
# hash of the go.mod/go.sum files, the wrapper sources, the Go version and the
# build flags. A key that is already built is not rebuilt (a warm run takes
# about a second); the binaries are then linked into $STATE/bin.
#
# Go caches: the go command's own GOCACHE and GOMODCACHE (`go env`), shared
# with every other Go build on the machine; set them in the environment to
# move them. Cold, on 2 cores: ~15 s of module downloads (~900 MB unpacked),
# then kubernaut-k8s ~4.5 min (~2,700 packages) and kube-state-metrics ~1.5 min;
# the build cache grows by ~4 GB. Only the newest 3 builds are kept in $STATE/k8s.
#
# Usage: scripts/build-k8s.sh [--print-bin-dir] [--force]
#   --print-bin-dir  print the bin directory on stdout (progress goes to stderr)
#   --force          rebuild even when this key is built
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

STATE="${KUBERNAUT_STATE_DIR:-$HOME/.local/state/kubernaut}"
CP_DIR="$ROOT/tools/k8s/controlplane"
KSM_DIR="$ROOT/tools/k8s/kube-state-metrics"

PRINT_BIN_DIR=0
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --print-bin-dir) PRINT_BIN_DIR=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-k8s: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# Progress goes to stderr so that --print-bin-dir leaves stdout clean.
step() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'build-k8s: error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || fail "'go' is not on PATH (Go 1.26.8 or newer is needed)"
for f in "$CP_DIR/go.mod" "$CP_DIR/go.sum" "$KSM_DIR/go.mod" "$KSM_DIR/go.sum"; do
  [ -f "$f" ] || fail "missing $f"
done

# The version a go.mod requires of a module (first match, require lines only).
required() { # required GO_MOD MODULE
  awk -v m="$2" '
    /^replace[ (]/ { inrep = ($2 == "(") ; next }
    inrep && /^\)/ { inrep = 0; next }
    inrep { next }
    $1 ~ /^\/\// { next }
    { for (i = 1; i < NF; i++) if ($i == m) { print $(i + 1); exit } }
  ' "$1"
}
K8S_VERSION="$(required "$CP_DIR/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(required "$CP_DIR/go.mod" go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(required "$CP_DIR/go.mod" sigs.k8s.io/kwok)"
KSM_VERSION="$(required "$KSM_DIR/go.mod" k8s.io/kube-state-metrics/v2)"
KSM_CLIENT_GO="$(required "$KSM_DIR/go.mod" k8s.io/client-go)"
for v in K8S_VERSION ETCD_VERSION KWOK_VERSION KSM_VERSION KSM_CLIENT_GO; do
  [ -n "${!v}" ] || fail "could not read $v from tools/k8s/*/go.mod"
done

GO_VERSION="$(go env GOVERSION)"
GO_NEED="$(awk '$1 == "go" { print $2; exit }' "$CP_DIR/go.mod")"
if [ "$(printf '%s\n%s\n' "go$GO_NEED" "$GO_VERSION" | sort -V | head -n1)" != "go$GO_NEED" ]; then
  fail "tools/k8s needs go$GO_NEED or newer, 'go' is $GO_VERSION"
fi

K8S_MINOR="${K8S_VERSION#v1.}"; K8S_MINOR="${K8S_MINOR%%.*}"
BUILD_FLAGS=(-trimpath -buildvcs=false)
export CGO_ENABLED=0

# Everything that changes the output goes into the key.
HASH="$(
  {
    printf '%s\n' "$GO_VERSION" "$(go env GOOS GOARCH)" "CGO_ENABLED=$CGO_ENABLED" "${BUILD_FLAGS[*]}" "layout=2"
    sha256sum < "$0"  # the content only: the key must not depend on how the script is called
    (cd "$ROOT/tools/k8s" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -c1-12
)"
KEY="k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-ksm-$KSM_VERSION-$HASH"
OUT="$STATE/k8s/$KEY"
BIN="$OUT/bin"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

link_into_state() {
  mkdir -p "$STATE/bin"
  for name in kubernaut-k8s kube-state-metrics "${COMPONENTS[@]}"; do
    ln -sfn "$BIN/$name" "$STATE/bin/$name"
  done
}

if [ "$FORCE" = 0 ] && [ -f "$OUT/.complete" ]; then
  link_into_state
  step "k8s $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, kube-state-metrics $KSM_VERSION: up to date in $BIN"
  [ "$PRINT_BIN_DIR" = 1 ] && printf '%s\n' "$BIN"
  exit 0
fi

# One build at a time per state dir; a second caller waits, then finds it built.
mkdir -p "$STATE/k8s"
exec 9>"$STATE/k8s/.build.lock"
if command -v flock >/dev/null 2>&1; then
  flock -n 9 || { step "another build-k8s.sh is building; waiting for it"; flock 9; }
  if [ "$FORCE" = 0 ] && [ -f "$OUT/.complete" ]; then
    link_into_state
    step "built by the other run: $BIN"
    [ "$PRINT_BIN_DIR" = 1 ] && printf '%s\n' "$BIN"
    exit 0
  fi
fi

# k8s.io/kubernetes requires each staging module at v0.0.0; every one must be
# replaced by the published v0.<minor>.<patch> of the same release.
step "checking the module graph (k8s.io/kubernetes $K8S_VERSION staging replacements)"
K8S_MOD="$(cd "$CP_DIR" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | awk -F'"' '$2 == "GoMod" { print $4 }')" \
  || fail "could not download k8s.io/kubernetes@$K8S_VERSION from the Go module proxy (GOPROXY=$(go env GOPROXY))"
STAGING_WANT="${K8S_VERSION/v1./v0.}"
missing=()
while read -r mod; do
  got="$(awk -v m="$mod" '$1 == m && $2 == "=>" { print $4 }' "$CP_DIR/go.mod")"
  [ "$got" = "$STAGING_WANT" ] || missing+=("$mod (replace has '${got:-nothing}', want $STAGING_WANT)")
done < <(awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// { print $1 }' "$K8S_MOD" | sort -u)
if [ "${#missing[@]}" -gt 0 ]; then
  fail "tools/k8s/controlplane/go.mod must replace every staging module of k8s.io/kubernetes $K8S_VERSION with $STAGING_WANT; wrong or missing: ${missing[*]}"
fi
K8S_DATE="$(cd "$CP_DIR" && go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)"
KSM_DATE="$(cd "$KSM_DIR" && go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kube-state-metrics/v2)"

K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
  K8S_LDFLAGS+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean -X $pkg.buildDate=${K8S_DATE:-1970-01-01T00:00:00Z}"
done
K8S_LDFLAGS+=" -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}"
KSM_LDFLAGS="-s -w -X github.com/prometheus/common/version.Version=${KSM_VERSION#v}"
KSM_LDFLAGS+=" -X github.com/prometheus/common/version.BuildDate=${KSM_DATE:-1970-01-01T00:00:00Z}"
KSM_LDFLAGS+=" -X github.com/prometheus/common/version.Branch=release -X github.com/prometheus/common/version.BuildUser=kubernaut"
KSM_LDFLAGS+=" -X k8s.io/kube-state-metrics/v2/pkg/app.ClientGoVersion=$KSM_CLIENT_GO"

TMP="$OUT.tmp.$$"
LOG="$STATE/k8s/$KEY.build.log"
mkdir -p "$TMP/bin"
: >"$LOG"
ticker_pid=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  if [ -n "$ticker_pid" ]; then kill "$ticker_pid" 2>/dev/null || true; wait "$ticker_pid" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# go build -v names each package it compiles: count them as progress.
start_ticker() { # start_ticker WHAT
  local what="$1" t0=$SECONDS
  ( while sleep 30; do
      printf '    ... %s: %d packages compiled, %ds\n' "$what" "$(grep -vc '^#\|^go: ' "$LOG" 2>/dev/null || true)" $((SECONDS - t0)) >&2
    done ) &
  ticker_pid=$!
}
stop_ticker() { kill "$ticker_pid" 2>/dev/null || true; wait "$ticker_pid" 2>/dev/null || true; ticker_pid=""; }

build() { # build WHAT DIR OUTPUT LDFLAGS PACKAGE
  local what="$1" dir="$2" output="$3" ldflags="$4" pkg="$5" t0=$SECONDS
  step "building $what (log: $LOG)"
  : >"$LOG"
  start_ticker "$what"
  if ! (cd "$dir" && go build -v "${BUILD_FLAGS[@]}" -ldflags="$ldflags" -o "$output" "$pkg") >>"$LOG" 2>&1; then
    stop_ticker
    echo "---- last lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2
    fail "building $what failed (full log: $LOG)"
  fi
  stop_ticker
  step "built $what in $((SECONDS - t0))s ($(du -h "$output" | cut -f1))"
}

T0=$SECONDS
step "building $KEY into $OUT (GOCACHE=$(go env GOCACHE), GOMODCACHE=$(go env GOMODCACHE))"
build "kubernaut-k8s (kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION)" \
  "$CP_DIR" "$TMP/bin/kubernaut-k8s" "$K8S_LDFLAGS" ./cmd/kubernaut-k8s
build "kube-state-metrics $KSM_VERSION (client-go $KSM_CLIENT_GO)" \
  "$KSM_DIR" "$TMP/bin/kube-state-metrics" "$KSM_LDFLAGS" k8s.io/kube-state-metrics/v2
for name in "${COMPONENTS[@]}"; do ln -sfn kubernaut-k8s "$TMP/bin/$name"; done

step "checking the binaries"
got="$("$TMP/bin/kube-apiserver" --version 2>&1)" || fail "kube-apiserver --version failed: $got"
[ "$got" = "Kubernetes $K8S_VERSION" ] || fail "kube-apiserver --version says '$got', want 'Kubernetes $K8S_VERSION'"
got="$("$TMP/bin/etcd" --version 2>&1)" || fail "etcd --version failed: $got"
grep -q "etcd Version: ${ETCD_VERSION#v}" <<<"$got" || fail "etcd --version says '$got', want ${ETCD_VERSION#v}"
got="$("$TMP/bin/kube-state-metrics" version 2>&1)" || fail "kube-state-metrics version failed: $got"
grep -q "${KSM_VERSION#v}" <<<"$got" || fail "kube-state-metrics version says '$got', want ${KSM_VERSION#v}"
got="$("$TMP/bin/kwok" --version 2>&1)" || fail "kwok --version failed: $got"
grep -q "kwok version $KWOK_VERSION" <<<"$got" || fail "kwok --version says '$got', want $KWOK_VERSION"
# Captured first: `grep -q` stops reading at the first match, and under pipefail the
# writer's SIGPIPE would fail the pipeline whenever the output outgrows the pipe buffer.
got="$("$TMP/bin/kubernaut-k8s" kwok-stages)" || fail "kubernaut-k8s kwok-stages failed"
grep -q 'name: pod-ready' <<<"$got" || fail "kubernaut-k8s kwok-stages printed no pod-ready stage"

cat >"$TMP/versions.env" <<EOF
KUBERNETES_VERSION=$K8S_VERSION
ETCD_VERSION=$ETCD_VERSION
KWOK_VERSION=$KWOK_VERSION
KUBE_STATE_METRICS_VERSION=$KSM_VERSION
GO_VERSION=$GO_VERSION
KEY=$KEY
EOF
rm -rf "$OUT"
touch "$TMP/.complete"
mv "$TMP" "$OUT"
trap - EXIT
link_into_state
# Keep the newest 3 builds (running processes keep their binaries until they exit).
# shellcheck disable=SC2012
ls -1dt "$STATE"/k8s/k8s-*/ 2>/dev/null | tail -n +4 | while read -r old; do
  old="${old%/}"
  [ "$old" = "$OUT" ] && continue
  step "removing an older build: $old"
  rm -rf "$old" "$old.build.log"
done
step "done in $((SECONDS - T0))s: $BIN (linked into $STATE/bin)"
[ "$PRINT_BIN_DIR" = 1 ] && printf '%s\n' "$BIN"
exit 0
