{{/* The chart's name. */}}
{{- define "metadata-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the objects' names. */}}
{{- define "metadata-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels selecting the agent's pods. */}}
{{- define "metadata-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metadata-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "metadata-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "metadata-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: metadata-agent
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "metadata-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "metadata-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "metadata-agent.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Whether SYS_ADMIN is granted (legacy capabilities for the hook): privilege escalation
cannot then be refused. */}}
{{- define "metadata-agent.sysAdmin" -}}
{{- if or (and (include "metadata-agent.hookOn" .) .Values.hook.legacyCapabilities) (has "SYS_ADMIN" .Values.extraCapabilities) -}}true{{- end -}}
{{- end -}}

{{/* Whether the hook may attach: enabled is true or "auto". */}}
{{- define "metadata-agent.hookOn" -}}
{{- if ne (toString .Values.hook.enabled) "false" -}}true{{- end -}}
{{- end -}}

{{/*
The capabilities the enabled features need, and no more (docs/deploy.md has the table):
reading other users' processes always; loading and attaching BPF programs with the hook.
*/}}
{{- define "metadata-agent.capabilities" -}}
{{- $caps := list "SYS_PTRACE" "DAC_READ_SEARCH" -}}
{{- if include "metadata-agent.hookOn" . -}}
{{- if .Values.hook.legacyCapabilities -}}
{{- $caps = concat $caps (list "SYS_ADMIN" "NET_ADMIN") -}}
{{- else -}}
{{- $caps = concat $caps (list "BPF" "PERFMON" "NET_ADMIN") -}}
{{- end -}}
{{- end -}}
{{- $caps = concat $caps .Values.extraCapabilities | uniq -}}
{{- toYaml $caps -}}
{{- end -}}

{{/* The agent's configuration file. */}}
{{- define "metadata-agent.config" -}}
{{- $server := dict "listen" .Values.api.listen "opsListen" (printf "0.0.0.0:%d" (int .Values.ops.port)) -}}
{{- if .Values.api.tokenSecret -}}
{{- $_ := set $server "tokenFile" "/etc/metadata-agent/api-token/token" -}}
{{- end -}}
{{- if .Values.ops.tokenSecret -}}
{{- $_ := set $server "opsTokenFile" "/etc/metadata-agent/ops-token/token" -}}
{{- end -}}
{{- $kubernetes := dict "enabled" .Values.collectors.kubernetes.enabled "kubeletPort" (int .Values.collectors.kubernetes.kubeletPort) "skipKubeletVerification" .Values.collectors.kubernetes.skipKubeletVerification -}}
{{- with .Values.collectors.kubernetes.kubeletHost -}}{{- $_ := set $kubernetes "kubeletHost" . -}}{{- end -}}
{{- with .Values.collectors.kubernetes.kubeletCA -}}{{- $_ := set $kubernetes "kubeletCA" . -}}{{- end -}}
{{- $docker := dict "enabled" .Values.collectors.docker.enabled "socketPath" "/var/run/docker.sock" -}}
{{- $config := dict
  "server" $server
  "policies" (dict "path" "/etc/metadata-agent/policies" "defaultAction" .Values.policies.defaultAction)
  "hook" (dict "enabled" .Values.hook.enabled "mode" .Values.hook.mode "pendingVerdict" .Values.hook.pendingVerdict "pin" .Values.hook.pin)
  "collectors" (dict "kubernetes" $kubernetes "docker" $docker)
-}}
{{- toYaml (mergeOverwrite $config (deepCopy .Values.config)) -}}
{{- end -}}
