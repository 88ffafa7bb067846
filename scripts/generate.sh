#!/usr/bin/env bash
# Regenerates everything generated from the protos. The one command: `make generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="${KUBERNAUT_STATE_DIR:-$HOME/.local/state/kubernaut}"
export PATH="$PWD/.venv/bin:$STATE/bin:$PATH"

# buf/validate/validate.proto, printed from its Go module (the Buf registry is not
# reachable from our build machines).
(cd tools/protodeps && go run . ../../third_party/proto)
buf generate
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
