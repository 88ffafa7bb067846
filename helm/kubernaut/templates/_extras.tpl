{{/* Helpers of the optional parts: cert-manager certificates, NetworkPolicies,
CloudNativePG, monitoring. */}}

{{/* Whether components get their mTLS certificates from cert-manager (Istio off). */}}
{{- define "kubernaut.certManager" -}}
{{- if and (not .Values.istio.enabled) .Values.mtls.certManager.enabled -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding a component's certificate. Input: dict "root" $ "account" account. */}}
{{- define "kubernaut.certSecret" -}}
{{- if include "kubernaut.certManager" .root -}}
{{- printf "kubernaut-%s-tls" .account -}}
{{- else -}}
{{- required "mtls.existingSecret (or mtls.certManager.enabled): with Istio off, Kubernaut does mTLS itself and needs its certificates" .root.Values.mtls.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The items of a component's certificate volume, as the runtime reads them from
KUBERNAUT_CERTS_DIR (kubernaut/runtime/certs.py CertPaths): ca.crt, <account>.crt,
<account>.key; its own key only, never another component's. Input: dict "root" $
"account" account. */}}
{{- define "kubernaut.certItems" -}}
{{- $cm := include "kubernaut.certManager" .root -}}
- key: ca.crt
  path: ca.crt
- key: {{ ternary "tls.crt" (printf "%s.crt" .account) (not (empty $cm)) }}
  path: {{ .account }}.crt
- key: {{ ternary "tls.key" (printf "%s.key" .account) (not (empty $cm)) }}
  path: {{ .account }}.key
{{- end -}}

{{/* The CloudNativePG Cluster's name; its app Secret is <name>-app. */}}
{{- define "kubernaut.cnpgName" -}}kubernaut-postgresql{{- end -}}

{{/* The Secret and key of KUBERNAUT_DATABASE_URL as "name key", or nothing: from
database.existingSecret, from database.url (a Secret the chart creates, secrets.yaml) or
from the CloudNativePG cluster's app Secret; two sources are refused. */}}
{{- define "kubernaut.databaseSecret" -}}
{{- $sources := list -}}
{{- if .Values.database.existingSecret }}{{ $sources = append $sources "database.existingSecret" }}{{ end -}}
{{- if .Values.database.url }}{{ $sources = append $sources "database.url" }}{{ end -}}
{{- if .Values.postgresql.cloudnativepg.enabled }}{{ $sources = append $sources "postgresql.cloudnativepg.enabled" }}{{ end -}}
{{- if gt (len $sources) 1 -}}
{{- fail (printf "%s: choose one source of the database URL" (join " and " $sources)) -}}
{{- end -}}
{{- if .Values.postgresql.cloudnativepg.enabled -}}
{{- printf "%s-app uri" (include "kubernaut.cnpgName" .) -}}
{{- else if .Values.database.existingSecret -}}
{{- printf "%s %s" .Values.database.existingSecret .Values.database.key -}}
{{- else if .Values.database.url -}}
{{- printf "%s url" (include "kubernaut.createdName" "database") -}}
{{- end -}}
{{- end -}}

{{/* The names of the Secrets the chart creates from values. Input: "database", "env" or
"webhook-tokens". */}}
{{- define "kubernaut.createdName" -}}
{{- printf "kubernaut-%s" . -}}
{{- end -}}

{{/* The Secret of secret KUBERNAUT_* settings given to every component by envFrom:
secretEnv.existingSecret, or the one created from secretEnv.values; or nothing. */}}
{{- define "kubernaut.envSecret" -}}
{{- if and .Values.secretEnv.existingSecret .Values.secretEnv.values -}}
{{- fail "secretEnv.existingSecret and secretEnv.values: choose one source of the secret settings" -}}
{{- end -}}
{{- if .Values.secretEnv.existingSecret -}}
{{- .Values.secretEnv.existingSecret -}}
{{- else if .Values.secretEnv.values -}}
{{- include "kubernaut.createdName" "env" -}}
{{- end -}}
{{- end -}}

{{/* The Secret of the webhook senders' tokens (one per line under edge.tokens.key):
edge.tokens.existingSecret, or the one created from edge.tokens.values; or nothing. */}}
{{- define "kubernaut.tokensSecret" -}}
{{- if and .Values.edge.tokens.existingSecret .Values.edge.tokens.values -}}
{{- fail "edge.tokens.existingSecret and edge.tokens.values: choose one source of the webhook tokens" -}}
{{- end -}}
{{- if .Values.edge.tokens.existingSecret -}}
{{- .Values.edge.tokens.existingSecret -}}
{{- else if .Values.edge.tokens.values -}}
{{- include "kubernaut.createdName" "webhook-tokens" -}}
{{- end -}}
{{- end -}}

{{/* The Secrets the chart creates (secrets.yaml) as YAML: name to data (plain text);
"{}" when every secret is taken by reference. The pods' checksum/secrets annotation is
computed from it too, so that a changed value rolls the pods that read it. */}}
{{- define "kubernaut.createdSecrets" -}}
{{- $out := dict -}}
{{- /* The source helpers refuse two sources of the same thing. */ -}}
{{- $_ := include "kubernaut.databaseSecret" . -}}
{{- $_ = include "kubernaut.envSecret" . -}}
{{- $_ = include "kubernaut.tokensSecret" . -}}
{{- if .Values.database.url -}}
{{- $_ = set $out (include "kubernaut.createdName" "database") (dict "url" .Values.database.url) -}}
{{- end -}}
{{- if .Values.secretEnv.values -}}
{{- $env := dict -}}
{{- range $k, $v := .Values.secretEnv.values }}{{ $_ = set $env $k (toString $v) }}{{ end -}}
{{- $_ = set $out (include "kubernaut.createdName" "env") $env -}}
{{- end -}}
{{- /* Nothing mounts the tokens without the edge. */ -}}
{{- if and .Values.edge.enabled .Values.edge.tokens.values -}}
{{- $tokens := join "\n" .Values.edge.tokens.values -}}
{{- $_ = set $out (include "kubernaut.createdName" "webhook-tokens") (dict .Values.edge.tokens.key $tokens) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The accounts a component calls by the call table (whose allowedCallers name it).
Input: dict "gen" generated "account" account. Output: a YAML list of components. */}}
{{- define "kubernaut.callees" -}}
{{- $callees := list -}}
{{- range $d := .gen.components -}}
{{- range $d.allowedCallers -}}
{{- if eq .account $.account -}}
{{- $callees = append $callees (dict "account" $d.account "grpcPort" $d.grpcPort) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $callees -}}
{{- end -}}
