{{/*
Labels on every object. The selector (credbroker.selectorLabels) is the
kustomize base's, so that a release can take over the base's DaemonSet.
*/}}
{{- define "credbroker.labels" -}}
app.kubernetes.io/part-of: credbroker
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "credbroker.selectorLabels" -}}
app.kubernetes.io/name: credbroker-agent
{{- end }}

{{- define "credbroker.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}:{{ $tag }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{/*
credbroker.flag renders "- --name=value" when value is set: not null and not
the empty string. 0 and false are set (the agent refuses a 0 it cannot use).
*/}}
{{- define "credbroker.flag" -}}
{{- $v := index . 1 -}}
{{- if not (or (kindIs "invalid" $v) (eq (toString $v) "")) }}
- {{ printf "--%s=%v" (index . 0) $v | quote }}
{{- end }}
{{- end }}

{{/* credbroker.switch renders "- --name" when value is true. */}}
{{- define "credbroker.switch" -}}
{{- if index . 1 }}
- --{{ index . 0 }}
{{- end }}
{{- end }}

{{/*
The audiences the agent requests tokens for, as a list: AWS's, GCP's
provider when GCP is on, Azure's when Azure is on, and
admissionPolicy.extraAudiences.
*/}}
{{- define "credbroker.audienceList" -}}
{{- $auds := list .Values.aws.audience -}}
{{- with .Values.gcp.workloadIdentityProvider -}}
{{- $auds = append $auds (printf "//iam.googleapis.com/%s" .) -}}
{{- end -}}
{{- if .Values.azure.tenantID -}}
{{- $auds = append $auds (.Values.azure.audience | default "api://AzureADTokenExchange") -}}
{{- end -}}
{{- concat $auds .Values.admissionPolicy.extraAudiences | uniq | toJson -}}
{{- end }}

{{/* The audiences the admission policy allows, as a CEL list literal. */}}
{{- define "credbroker.allowedAudiences" -}}
{{- $auds := list -}}
{{- range (include "credbroker.audienceList" . | fromJsonArray) -}}
{{- $auds = append $auds (printf "'%s'" .) -}}
{{- end -}}
[{{ join ", " $auds }}]
{{- end }}

{{/* True when the Prometheus Operator's API is served. */}}
{{- define "credbroker.hasMonitoringAPI" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end -}}
{{- end }}

{{/*
The namespace of the agent's objects: namespace.name, or the release's.
The release record stays in the release namespace (helm -n), which must
exist before the install; this one the chart can create and label.
*/}}
{{- define "credbroker.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end }}

{{/*
credbroker.attestMode is attest.mode, checked: netns (the default),
container (adds SYS_PTRACE to the agent's capabilities) or off.
*/}}
{{- define "credbroker.attestMode" -}}
{{- $m := .Values.attest.mode | default "netns" -}}
{{- if not (has $m (list "netns" "container" "off")) -}}
{{- fail (printf "attest.mode %q: want netns, container or off" $m) -}}
{{- end -}}
{{- $m -}}
{{- end }}
