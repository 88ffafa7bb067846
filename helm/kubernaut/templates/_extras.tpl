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

{{/* The Secret and key of KUBERNAUT_DATABASE_URL as "name key", or nothing. */}}
{{- define "kubernaut.databaseSecret" -}}
{{- if .Values.postgresql.cloudnativepg.enabled -}}
{{- if .Values.database.existingSecret -}}
{{- fail "database.existingSecret and postgresql.cloudnativepg.enabled: choose one source of the database URL" -}}
{{- end -}}
{{- printf "%s-app uri" (include "kubernaut.cnpgName" .) -}}
{{- else if .Values.database.existingSecret -}}
{{- printf "%s %s" .Values.database.existingSecret .Values.database.key -}}
{{- end -}}
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
