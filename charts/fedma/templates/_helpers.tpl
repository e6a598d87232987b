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
