{{/* Names, labels and the small pieces every template shares. */}}

{{- define "bebop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bebop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bebop.gatewayName" -}}
{{- printf "%s-gateway" (include "bebop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bebop.engineName" -}}
{{- printf "%s-engine" (include "bebop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The headless Service: one DNS name resolving to every ready engine pod. */}}
{{- define "bebop.engineHeadless" -}}
{{- printf "%s-engines" (include "bebop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bebop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "bebop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bebop
{{- end }}

{{- define "bebop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bebop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bebop.gatewaySelectorLabels" -}}
{{ include "bebop.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "bebop.engineSelectorLabels" -}}
{{ include "bebop.selectorLabels" . }}
app.kubernetes.io/component: engine
{{- end }}

{{- define "bebop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bebop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bebop.secretName" -}}
{{- default (printf "%s-tokens" (include "bebop.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. Argument: (dict "image" . "root" $) */}}
{{- define "bebop.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* The gateway's token variables, read from the Secret. Argument: the root context. */}}
{{- define "bebop.tokenEnv" -}}
{{- $secret := include "bebop.secretName" . }}
- name: BEBOP_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.auth.secretKeys.apiToken }}
- name: BEBOP_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.auth.secretKeys.adminToken }}
- name: BEBOP_ENGINE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.auth.secretKeys.engineToken }}
- name: BEBOP_METRICS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.auth.secretKeys.metricsToken }}
{{- end }}

{{- define "bebop.engineTokenEnv" -}}
- name: BEBOP_ENGINE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "bebop.secretName" . }}
      key: {{ .Values.auth.secretKeys.engineToken }}
{{- end }}

{{/* host:port of the engines' headless Service, for `bebop serve --engine-dns`. */}}
{{- define "bebop.engineDns" -}}
{{- printf "%s.%s.svc.%s:%d" (include "bebop.engineHeadless" .) .Release.Namespace .Values.clusterDomain (int .Values.engines.port) }}
{{- end }}
