#!/usr/bin/env bash
# Installs everything Kubernaut needs, on a fresh machine or a warm one:
#   - Python 3.11 packages from uv.lock into .venv (uv from PyPI),
#   - buf (npm @bufbuild/buf) and grpcurl (built from its Go module),
#   - the npm packages of package-lock.json (protoc-gen-es for gen/ts, examples/ts's runtime
#     and tsc), by npm ci into a directory keyed by the lockfile's hash; node_modules links to it,
#   - buf's Go plugins, protoc-gen-go and protoc-gen-go-grpc (built from their Go modules),
#   - Prometheus and AlertManager (Debian packages),
#   - kube-apiserver, etcd, controller-manager, scheduler, KWOK and kube-state-metrics,
#     built from their Go modules by scripts/build-k8s.sh,
#   - Helm (built from its Go module) and the CRDs the chart is checked against (Istio,
#     prometheus-operator, cert-manager, CloudNativePG, from theirs), by scripts/build-helm.sh,
#   - Jaeger v2 (built from its Go module), the dev stack's trace backend, by
#     scripts/build-jaeger.sh,
#   - Weaviate (built from its Go module), a vector store for storage (tests, `up --vector-store weaviate`), by
#     scripts/build-weaviate.sh,
#   - the dev stack's local model: llama-cpp-python built from its sdist into its own
#     virtualenv, and SmolLM2-135M's GGUF file, by scripts/build-llama.sh,
# cached under the state directory keyed by version, so a warm run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
BUF_VERSION=1.75.0
GRPCURL_VERSION=v1.9.4

STATE="${KUBERNAUT_STATE_DIR:-$HOME/.local/state/kubernaut}"
TOOLS="$STATE/tools"
BIN="$STATE/bin"
mkdir -p "$TOOLS" "$BIN"

step() { printf '==> %s\n' "$*"; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "setup: '$1' is required but not installed ($2)" >&2; exit 1; }; }

need python3 "Python 3.11"
need npm "Node.js 20 or newer with npm, for buf and gen/ts"
need go "Go 1.22 or newer, for grpcurl"

if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  step "installing uv $UV_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "uv==$UV_VERSION"
fi

step "Debian packages (Prometheus, AlertManager, Redis; buildah, mmdebstrap, podman and runc for the image)"
if [ "$(id -u)" = 0 ]; then
  bash scripts/install-debian-packages.sh
elif command -v sudo >/dev/null 2>&1; then
  sudo bash scripts/install-debian-packages.sh
else
  echo "setup: Debian packages need root (run scripts/install-debian-packages.sh as root)" >&2
  exit 1
fi

step "Python packages (uv.lock)"
uv sync --frozen --quiet
uv pip check --quiet

if [ ! -x "$TOOLS/buf-$BUF_VERSION/node_modules/.bin/buf" ]; then
  step "buf $BUF_VERSION (npm)"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/buf-$BUF_VERSION" "@bufbuild/buf@$BUF_VERSION"
fi
ln -sfn "$TOOLS/buf-$BUF_VERSION/node_modules/.bin/buf" "$BIN/buf"

# package-lock.json's packages (protoc-gen-es, the TypeScript example's runtime and tsc), by
# `npm ci` into a directory named by the lockfile's hash: a warm run (even a fresh clone)
# installs nothing and only links ./node_modules and protoc-gen-es to it.
NPM_DIR="$TOOLS/npm-$(sha256sum package-lock.json | cut -c1-16)"
if [ ! -d "$NPM_DIR/node_modules" ]; then
  step "npm packages (package-lock.json)"
  rm -rf "$NPM_DIR.tmp" && mkdir -p "$NPM_DIR.tmp"
  cp package.json package-lock.json "$NPM_DIR.tmp/"
  (cd "$NPM_DIR.tmp" && npm ci --silent --no-audit --no-fund --ignore-scripts)
  mv "$NPM_DIR.tmp" "$NPM_DIR"
fi
if [ -e node_modules ] && [ ! -L node_modules ]; then
  echo "setup: ./node_modules is a directory, not setup's link: remove it" >&2
  exit 1
fi
ln -sfn "$NPM_DIR/node_modules" node_modules
ln -sfn "$NPM_DIR/node_modules/.bin/protoc-gen-es" "$BIN/protoc-gen-es"

if [ ! -x "$TOOLS/grpcurl-$GRPCURL_VERSION/grpcurl" ]; then
  step "grpcurl $GRPCURL_VERSION (go install)"
  GOBIN="$TOOLS/grpcurl-$GRPCURL_VERSION" GOFLAGS=-mod=mod \
    go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
fi
ln -sfn "$TOOLS/grpcurl-$GRPCURL_VERSION/grpcurl" "$BIN/grpcurl"

# buf generate's Go plugins, built from their Go modules: protoc-gen-go at the
# google.golang.org/protobuf version that gen/go's go.mod requires (code and runtime agree),
# protoc-gen-go-grpc pinned here. Keyed by version: a warm run builds nothing.
PROTOC_GEN_GO_VERSION=$(awk '$1 == "google.golang.org/protobuf" { print $2 }' gen/go/go.mod)
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
[ -n "$PROTOC_GEN_GO_VERSION" ] || { echo "setup: no google.golang.org/protobuf in gen/go/go.mod" >&2; exit 1; }
for plugin in "protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go $PROTOC_GEN_GO_VERSION" \
  "protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION"; do
  read -r name package version <<<"$plugin"
  if [ ! -x "$TOOLS/$name-$version/$name" ]; then
    step "$name $version (go install)"
    GOBIN="$TOOLS/$name-$version" GOFLAGS=-mod=mod go install "$package@$version"
  fi
  ln -sfn "$TOOLS/$name-$version/$name" "$BIN/$name"
done

step "Kubernetes control plane, KWOK, kube-state-metrics (built from Go modules; ~6 min cold)"
bash scripts/build-k8s.sh

step "Helm and the chart's CRDs (built and taken from Go modules; ~5 min cold)"
bash scripts/build-helm.sh

step "Jaeger, the dev stack's trace backend (built from its Go module; ~13 min cold)"
bash scripts/build-jaeger.sh

step "Weaviate, a vector store for storage (built from its Go module; ~3 min cold)"
bash scripts/build-weaviate.sh

step "local model: llama-cpp-python server and SmolLM2-135M (built from the sdist; ~8 min cold)"
bash scripts/build-llama.sh

step "ready: tools in $BIN, Python in .venv"
