{{/* Names and labels shared by every template. */}}
{{- define "fedma.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedma.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "fedma.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "fedma.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fedma.labels" -}}
app.kubernetes.io/name: {{ include "fedma.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
fedma.io/chart-role: {{ .Values.role }}
{{- end -}}

{{- define "fedma.operatorName" -}}
{{- printf "%s-operator" (include "fedma.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedma.operatorSelector" -}}
app.kubernetes.io/name: {{ include "fedma.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "fedma.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Trainer and aggregation pods: what the operator's Job builder puts on them. */}}
{{- define "fedma.trainerPodSelector" -}}
matchLabels:
  app.kubernetes.io/managed-by: fedma-operator
matchExpressions:
  - {key: fedma.io/role, operator: In, values: [silo, aggregate]}
{{- end -}}

{{- define "fedma.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "fedma.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/*
A monitor (ServiceMonitor, PodMonitor, PrometheusRule) needs the prometheus-operator's CRDs in
the cluster; without them the apiserver would refuse it after the other objects were created
(a half-install). Against a cluster (helm install / upgrade, helm template --validate) the
chart refuses before anything is applied, naming the value that asks for it. Offline (helm
template, helm lint) it cannot know the cluster's APIs and renders the monitor: Helm's built-in
API list lacks apiregistration.k8s.io/v1, which every kube-apiserver serves, so its presence
says the list came from a cluster's discovery.
Call with (dict "ctx" . "kind" "ServiceMonitor" "value" "monitoring.serviceMonitor.enabled").
*/}}
{{- define "fedma.requireMonitoringAPI" -}}
{{- $apis := .ctx.Capabilities.APIVersions -}}
{{- if and ($apis.Has "apiregistration.k8s.io/v1") (not ($apis.Has (printf "monitoring.coreos.com/v1/%s" .kind))) -}}
{{- fail (printf "%s=true, but this cluster has no %s API (monitoring.coreos.com/v1): install the prometheus-operator CRDs first (e.g. kube-prometheus-stack) or set %s=false" .value .kind .value) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces a namespaced hub operator serves (JSON list): operator.watchNamespaces, or
     the release namespace when none is listed. */}}
{{- define "fedma.watchNamespaces" -}}
{{- $op := .Values.operator }}
{{- if and $op.allNamespaces $op.watchNamespaces }}
{{- fail "operator.allNamespaces and operator.watchNamespaces exclude each other: set one" }}
{{- end }}
{{- toJson (default (list .Release.Namespace) $op.watchNamespaces) }}
{{- end }}

{{/* Egress rules to the cluster's DNS (networkPolicy.dns): the preset's targets and ports,
     plus dns.cidrs and dns.peers; dns.ports replaces the preset's ports. UDP and TCP each. */}}
{{- define "fedma.dnsEgress" -}}
{{- $dns := .Values.networkPolicy.dns }}
{{- $kubeDns := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" $dns.namespace)) "podSelector" (dict "matchLabels" $dns.podLabels) }}
{{- $presets := dict
    "kube-dns" (dict "to" (list $kubeDns) "ports" (list 53))
    "nodelocal" (dict "to" (list (dict "ipBlock" (dict "cidr" "169.254.20.10/32")) $kubeDns) "ports" (list 53))
    "openshift" (dict "to" (list (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" "openshift-dns")) "podSelector" (dict "matchLabels" (dict "dns.operator.openshift.io/daemonset-dns" "default")))) "ports" (list 5353 53))
    "gke-cloud-dns" (dict "to" (list (dict "ipBlock" (dict "cidr" "169.254.169.254/32"))) "ports" (list 53))
    "none" (dict "to" (list) "ports" (list 53)) }}
{{- $preset := get $presets $dns.preset }}
{{- $to := $preset.to }}
{{- range $dns.cidrs }}{{ $to = append $to (dict "ipBlock" (dict "cidr" .)) }}{{ end }}
{{- range $dns.peers }}{{ $to = append $to . }}{{ end }}
{{- if not $to }}
{{- fail "networkPolicy.dns.preset=none needs networkPolicy.dns.cidrs or .peers: trainer pods must resolve the store's name" }}
{{- end }}
{{- $ports := list }}
{{- range (default $preset.ports $dns.ports) }}
{{- $ports = append $ports (dict "port" . "protocol" "UDP") }}
{{- $ports = append $ports (dict "port" . "protocol" "TCP") }}
{{- end }}
{{- toYaml (list (dict "to" $to "ports" $ports)) }}
{{- end }}
