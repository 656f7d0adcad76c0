{{- define "outbox-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "outbox-relay.fullname" -}}
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

{{- define "outbox-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outbox-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The migration Job's pods: the release's instance but not the relay's app.kubernetes.io/name,
so no selector of the relay's (Deployment, Service, PodDisruptionBudget, NetworkPolicy) matches
them. (The Deployment's selector is immutable: it stays as it is, and the Job's pods move away.)
*/}}
{{- define "outbox-relay.migrationSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: {{ include "outbox-relay.name" . }}
app.kubernetes.io/component: migration
{{- end }}

{{- define "outbox-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "outbox-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "outbox-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "outbox-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "outbox-relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Secret the env vars read: yours (existingSecret) or the chart's. */}}
{{- define "outbox-relay.secretName" -}}
{{- default (include "outbox-relay.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* The port of /metrics, /healthz and /readyz: the relay's http.port (8080 by default). */}}
{{- define "outbox-relay.httpPort" -}}
{{- dig "http" "port" 8080 .Values.config | int }}
{{- end }}

{{/* relay.shutdown_timeout_ms, kept inside the pod's grace period: on SIGTERM the relay waits
this long for Kafka's answers, then marks what was answered and exits; the kubelet SIGKILLs
after terminationGracePeriodSeconds, and a SIGKILL loses the marks of acknowledged messages
too. 15 s are left for the last mark (up to the 10 s network-cut bound on a dead network)
and the exit: derived from the grace period unless config sets it; a config leaving less is
refused. */}}
{{- define "outbox-relay.shutdownTimeoutMs" -}}
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- $set := dig "relay" "shutdown_timeout_ms" "" .Values.config }}
{{- if and (kindIs "string" $set) (eq $set "") }}
{{- mul (sub $grace 15) 1000 }}
{{- else if and (not (kindIs "string" $set)) (gt (add (int64 $set) 15000) (mul $grace 1000)) }}
{{- fail (printf "config.relay.shutdown_timeout_ms (%d) must leave 15 s of terminationGracePeriodSeconds (%d) for the last mark and the exit: raise terminationGracePeriodSeconds to at least %d, or leave shutdown_timeout_ms out (the chart derives it)" (int64 $set) $grace (add (div (add (int64 $set) 999) 1000) 15)) }}
{{- else }}
{{- $set }}
{{- end }}
{{- end }}

{{/* The relay's YAML: the chart's defaults with .Values.config merged over them. */}}
{{- define "outbox-relay.config" -}}
{{- $kafka := dict "bootstrap_servers" .Values.kafka.bootstrapServers }}
{{- if .Values.kafka.sasl.enabled }}
{{- $_ := set $kafka "properties" (dict
      "security.protocol" .Values.kafka.sasl.securityProtocol
      "sasl.mechanism" .Values.kafka.sasl.mechanism
      "sasl.username" "${OUTBOX_KAFKA_USERNAME}"
      "sasl.password" "${OUTBOX_KAFKA_PASSWORD}") }}
{{- end }}
{{- $shutdown := include "outbox-relay.shutdownTimeoutMs" . }}
{{- $defaults := dict "postgres" (dict "dsn" "${OUTBOX_PG_DSN}") "kafka" $kafka "log" (dict "format" "json") "relay" (dict "shutdown_timeout_ms" (int64 $shutdown)) }}
{{- toYaml (mergeOverwrite $defaults (deepCopy .Values.config)) }}
{{- end }}

{{/* The migration hook's YAML: the relay's, plus postgres.admin_dsn (used only by migrate). */}}
{{- define "outbox-relay.migrationConfig" -}}
{{- $cfg := include "outbox-relay.config" . | fromYaml }}
{{- $_ := set $cfg.postgres "admin_dsn" "${OUTBOX_PG_ADMIN_DSN}" }}
{{- toYaml $cfg }}
{{- end }}

{{/* Env vars from the Secret; "migration" adds the privileged DSN. */}}
{{- define "outbox-relay.env" -}}
{{- $root := index . 0 }}
{{- $secret := include "outbox-relay.secretName" $root -}}
- name: OUTBOX_PG_DSN
  valueFrom:
    secretKeyRef:
      name: {{ index . 2 | default $secret }}
      key: {{ $root.Values.secretKeys.postgresDsn }}
{{- if eq (index . 1) "migration" }}
- name: OUTBOX_PG_ADMIN_DSN
  valueFrom:
    secretKeyRef:
      name: {{ index . 2 | default $secret }}
      key: {{ $root.Values.secretKeys.postgresAdminDsn }}
{{- end }}
{{- if $root.Values.kafka.sasl.enabled }}
- name: OUTBOX_KAFKA_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ index . 2 | default $secret }}
      key: {{ $root.Values.secretKeys.kafkaUsername }}
- name: OUTBOX_KAFKA_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ index . 2 | default $secret }}
      key: {{ $root.Values.secretKeys.kafkaPassword }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* "true" when the pods run under OpenShift's restricted-v2 SecurityContextConstraints: it
assigns each namespace its own uid range and refuses a pod that names a uid outside it, so
runAsUser and runAsGroup are left out there (the image runs as any uid: it writes only to the
/tmp emptyDir). auto: when the cluster serves security.openshift.io/v1. */}}
{{- define "outbox-relay.openshift" -}}
{{- $mode := .Values.openshift.adaptSecurityContext }}
{{- if or (eq $mode "force") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "security.openshift.io/v1")) }}true{{ end }}
{{- end }}

{{/* Security settings of every container (not configurable: the tests assert them). */}}
{{- define "outbox-relay.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
{{- if not (include "outbox-relay.openshift" .) }}
runAsUser: 10001
runAsGroup: 10001
{{- end }}
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "outbox-relay.podSecurityContext" -}}
runAsNonRoot: true
{{- if not (include "outbox-relay.openshift" .) }}
runAsUser: 10001
runAsGroup: 10001
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The Secret's data (chart-made): for the relay and, with admin, for the hook. */}}
{{- define "outbox-relay.secretData" -}}
{{- $root := index . 0 -}}
{{ $root.Values.secretKeys.postgresDsn }}: {{ $root.Values.postgres.dsn | b64enc | quote }}
{{- if index . 1 }}
{{ $root.Values.secretKeys.postgresAdminDsn }}: {{ $root.Values.postgres.adminDsn | default $root.Values.postgres.dsn | b64enc | quote }}
{{- end }}
{{- if $root.Values.kafka.sasl.enabled }}
{{ $root.Values.secretKeys.kafkaUsername }}: {{ $root.Values.kafka.sasl.username | b64enc | quote }}
{{ $root.Values.secretKeys.kafkaPassword }}: {{ $root.Values.kafka.sasl.password | b64enc | quote }}
{{- end }}
{{- end }}

{{/* The relay's affinity: .Values.affinity when set, else from podAntiAffinity: soft (default)
prefers, hard requires, the replicas on different nodes, so that the node that carries the
leader does not take its standby down with it. */}}
{{- define "outbox-relay.affinity" -}}
{{- if .Values.affinity }}
{{- toYaml .Values.affinity }}
{{- else if .Values.podAntiAffinity }}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "outbox-relay.selectorLabels" . | fromYaml)) }}
podAntiAffinity:
{{- if eq .Values.podAntiAffinity "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    {{- toYaml (list $term) | nindent 4 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    {{- toYaml (list (dict "weight" 100 "podAffinityTerm" $term)) | nindent 4 }}
{{- end }}
{{- end }}
{{- end }}
