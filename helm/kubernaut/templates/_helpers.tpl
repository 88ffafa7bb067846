{{/* The generated part: components, Istio paths, ClusterRoles (kubernaut render chart). */}}
{{- define "kubernaut.generated" -}}
{{- .Files.Get "generated/components.yaml" -}}
{{- end -}}

{{- define "kubernaut.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component; Istio's policies select on the same two. Input: the
component's account. */}}
{{- define "kubernaut.selectorLabels" -}}
app.kubernetes.io/name: kubernaut
app.kubernetes.io/component: {{ . }}
{{- end -}}

{{/* Input: dict "root" $ "account" account. */}}
{{- define "kubernaut.labels" -}}
{{ include "kubernaut.selectorLabels" .account }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: kubernaut
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "kubernaut.chart" .root }}
{{- end -}}

{{/* The Deployment, Service and PDB of a component; its ServiceAccount is its account,
which is also its identity in the mesh and in certificates. */}}
{{- define "kubernaut.objectName" -}}
{{- printf "kubernaut-%s" . -}}
{{- end -}}

{{- define "kubernaut.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Whether a component is rendered. Input: dict "root" $ "c" component. */}}
{{- define "kubernaut.enabled" -}}
{{- if or (ne .c.kind "http") .root.Values.edge.enabled -}}true{{- end -}}
{{- end -}}

{{/* A component's own environment (beside the shared ConfigMap). Input: dict "root" $
"conf" its merged values "http" whether it is the edge "tokenReview" whether TokenReview is on. */}}
{{- define "kubernaut.env" -}}
{{- $root := .root }}
{{- $conf := .conf }}
{{- $http := .http }}
{{- $tokenReview := .tokenReview }}
{{- /* database.existingSecret, database.url's Secret or the CloudNativePG cluster's app
Secret (_extras.tpl). */}}
{{- $db := include "kubernaut.databaseSecret" $root | splitList " " }}
{{- if ne (len $db) 2 }}
{{- fail "database.existingSecret (a Secret with the PostgreSQL URL), database.url (the chart creates the Secret) or postgresql.cloudnativepg.enabled is required: the services keep their state in PostgreSQL" }}
{{- end }}
{{- if and (not $http) (eq (len $db) 2) }}
- name: KUBERNAUT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ index $db 0 }}
      key: {{ index $db 1 }}
{{- end }}
{{- if $http }}
{{- $tokens := include "kubernaut.tokensSecret" $root }}
{{- if not (or $tokens $tokenReview) }}
{{- fail "edge.tokens.existingSecret, edge.tokens.values or edge.tokenReview.enabled is required: the edge takes no webhook it cannot authenticate (or set edge.enabled=false)" }}
{{- end }}
- name: KUBERNAUT_HTTP_HOST
  value: "0.0.0.0"
- name: KUBERNAUT_HTTP_PORT
  value: {{ $root.Values.edge.port | quote }}
{{- if $tokens }}
- name: KUBERNAUT_HTTP_TOKENS_FILE
  value: /etc/kubernaut/tokens/{{ $root.Values.edge.tokens.key }}
{{- end }}
{{- if $tokenReview }}
- name: KUBERNAUT_HTTP_TOKEN_REVIEW_ENABLED
  value: "true"
{{- if not $root.Values.edge.tokenReview.allowedUsers }}
{{- fail "edge.tokenReview.allowedUsers is required: any ServiceAccount of the cluster can get a valid token" }}
{{- end }}
- name: KUBERNAUT_HTTP_TOKEN_REVIEW_ALLOWED_USERS
  value: {{ $root.Values.edge.tokenReview.allowedUsers | join "," | quote }}
- name: KUBERNAUT_HTTP_TOKEN_REVIEW_AUDIENCES
  value: {{ $root.Values.edge.tokenReview.audiences | join "," | quote }}
{{- end }}
{{- end }}
{{- range $key, $value := $conf.env }}
- name: {{ $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}
