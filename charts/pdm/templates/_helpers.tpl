{{- define "pdm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pdm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "pdm.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "pdm.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pdm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pdm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pdm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "pdm.selectorLabels" . }}
{{- end -}}

{{- define "pdm.tokensSecret" -}}
{{- default (printf "%s-tokens" (include "pdm.fullname" .)) .Values.tokens.existingSecret -}}
{{- end -}}

{{- define "pdm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pdm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pdm.config" -}}
# Rendered by the pdm chart (pdm/src/config.rs documents every key).
listen = "0.0.0.0:{{ int .Values.port }}"
tokens_file = "/run/pdm/tokens/tokens.toml"

[powerdns]
api_url = {{ .Values.powerdns.apiUrl | toJson }}
api_key_file = "/etc/pdm/powerdns/{{ .Values.powerdns.apiKeySecret.key }}"
dns_addr = {{ .Values.powerdns.dnsAddr | toJson }}
health_check_interval = {{ .Values.powerdns.healthCheckInterval | toJson }}
api_timeout = {{ .Values.powerdns.apiTimeout | toJson }}
dns_timeout = {{ .Values.powerdns.dnsTimeout | toJson }}
keep_warm_interval = {{ .Values.powerdns.keepWarmInterval | toJson }}
{{- with .Values.commit }}

[commit]
{{- with .max_epoch_step }}
max_epoch_step = {{ int64 . }}
{{- end }}
{{- with .answer_within }}
answer_within = {{ . | toJson }}
{{- end }}
{{- end }}

[zones]
default_nameservers = {{ .Values.zones.defaultNameservers | toJson }}
soa_edit_api = {{ .Values.zones.soaEditApi | toJson }}
{{- if .Values.tls.enabled }}

[tls]
cert = "/etc/pdm/tls/tls.crt"
key = "/etc/pdm/tls/tls.key"
{{- end }}
{{ end -}}
