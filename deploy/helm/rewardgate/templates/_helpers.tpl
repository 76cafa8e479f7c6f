{{/* Names and labels shared by every template. */}}

{{- define "rewardgate.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rewardgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "rewardgate.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "rewardgate.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rewardgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "rewardgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "rewardgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rewardgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Postgres is in use when a URL or a Secret holding one is given; otherwise the gateway runs on SQLite. */}}
{{- define "rewardgate.postgres" -}}
{{- if or .Values.postgres.url .Values.postgres.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "rewardgate.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "rewardgate.fullname" .)) -}}
{{- end -}}

{{- define "rewardgate.modelsClaim" -}}
{{- .Values.models.existingClaim | default (printf "%s-models" (include "rewardgate.fullname" .)) -}}
{{- end -}}

{{- define "rewardgate.jobsClaim" -}}
{{- .Values.jobs.existingClaim | default (printf "%s-jobs" (include "rewardgate.fullname" .)) -}}
{{- end -}}

{{/* The jobs' dataset snapshots have a PVC of their own with Postgres and the training worker (on SQLite they live on
     the gateway's PVC, which the worker shares on the same node). */}}
{{- define "rewardgate.jobsPvc" -}}
{{- if and .Values.trainingWorker.enabled (include "rewardgate.postgres" .) -}}true{{- end -}}
{{- end -}}
