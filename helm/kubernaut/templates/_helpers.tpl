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
"conf" its merged values "http" whether it is the edge "tokenReview" whether TokenReview is on
"kubeconfigSecret" the Secret of its own kubeconfig, for a component that reads clusters
(kubernaut.kubeconfigSecret; absent for the others). */}}
{{- define "kubernaut.env" -}}
{{- $root := .root }}
{{- $conf := .conf }}
{{- $http := .http }}
{{- $tokenReview := .tokenReview }}
{{- if hasKey . "kubeconfigSecret" }}
{{- with $root.Values.clusters.named }}
- name: KUBERNAUT_KUBE_CLUSTERS
  value: {{ toJson . | quote }}
{{- end }}
{{- with $root.Values.clusters.default }}
- name: KUBERNAUT_KUBE_DEFAULT_CLUSTER
  value: {{ . | quote }}
{{- end }}
{{- if .kubeconfigSecret }}
- name: KUBERNAUT_KUBE_KUBECONFIG
  value: /etc/kubernaut/kube/kubeconfig
{{- end }}
{{- end }}
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

{{/* The Secret of a cluster-reading component's own kubeconfig (clusters.kubeconfigSecrets),
or nothing; refuses clusters the component could not tell apart. Input: dict "root" $
"name" the component's name. */}}
{{- define "kubernaut.kubeconfigSecret" -}}
{{- $clusters := .root.Values.clusters }}
{{- $secret := index $clusters.kubeconfigSecrets .name | default "" }}
{{- $names := keys $clusters.named | sortAlpha }}
{{- if and $names $clusters.default (not (has $clusters.default $names)) }}
{{- fail (printf "clusters.default %q is not one of clusters.named (%s)" $clusters.default (join ", " $names)) }}
{{- end }}
{{- if and (gt (len $names) 1) (not $clusters.default) }}
{{- fail (printf "clusters.default is required with several clusters: one of %s" (join ", " $names)) }}
{{- end }}
{{- range $name := $names }}
{{- /* Without its own kubeconfig a component would read the cluster it runs in instead. */}}
{{- if and (not (index $clusters.named $name).in_cluster) (not $secret) }}
{{- fail (printf "clusters.kubeconfigSecrets.%s is required: cluster %s is reached by a context of the component's own kubeconfig" $.name $name) }}
{{- end }}
{{- end }}
{{- $secret -}}
{{- end -}}
