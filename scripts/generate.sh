#!/usr/bin/env bash
# Regenerates everything generated from the protos. The one command: `make generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="${KUBERNAUT_STATE_DIR:-$HOME/.local/state/kubernaut}"
export PATH="$PWD/.venv/bin:$STATE/bin:$PATH"

# buf/validate/validate.proto, printed from its Go module (the Buf registry is not
# reachable from our build machines).
(cd tools/protodeps && go run . ../../third_party/proto)
# gen/go's go.mod and go.sum are sources, not output: put back after buf's `clean: true`
# empties gen/go (even when buf fails).
gomod=$(mktemp -d)
cp gen/go/go.mod gen/go/go.sum "$gomod/"
trap 'mkdir -p gen/go && cp "$gomod/go.mod" "$gomod/go.sum" gen/go/ && rm -rf "$gomod"' EXIT
buf generate
# buf/validate's Go code is the Go module it is printed from (gen/go's go.mod requires it).
rm -rf gen/go/buf
# gen/ts is the npm package @kubernaut/api: put back its manifest, which `clean: true` removed.
cp clients/ts/package.json gen/ts/package.json
# The mesh's AuthorizationPolicies come from the same call table as runtime authz.
kubernaut render istio > istio/kubernaut-authz.yaml
# The Helm chart's components, allowed callers and ClusterRoles, from the same sources.
kubernaut render chart > helm/kubernaut/generated/components.yaml
# The docs' table of remediation actions comes from the executor's catalogue.
kubernaut render actions > docs/actions.md
# The settings reference comes from the settings classes and the comments on their fields.
kubernaut render settings > docs/settings.md
# The rules' answer to each alert comes from their rule table.
kubernaut render alert-coverage > docs/alert-coverage.md
# kubernaut-api's wheel (clients/python: the generated code above and the client helper), for
# integrators; under the state directory, never committed.
uv build --quiet --wheel --clear --out-dir "$STATE/dist/kubernaut-api" clients/python
