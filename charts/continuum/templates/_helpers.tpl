{{- define "continuum.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "continuum.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "continuum.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "continuum.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "continuum.selectorLabels" . }}
{{- end -}}

{{- define "continuum.selectorLabels" -}}
app.kubernetes.io/name: {{ include "continuum.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.role }}
dr.openova.io/region: {{ .Values.region | quote }}
{{- end -}}

{{- define "continuum.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "continuum.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "continuum.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "continuum.tlsSecret" -}}
{{- default (printf "%s-node-tls" (include "continuum.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{- define "continuum.apiTlsSecret" -}}
{{- default (printf "%s-api-tls" (include "continuum.fullname" .)) .Values.api.tls.secretName -}}
{{- end -}}

{{- define "continuum.tokensSecret" -}}
{{- default (printf "%s-tokens" (include "continuum.fullname" .)) .Values.tokens.existingSecret -}}
{{- end -}}

{{- define "continuum.pdmTokenSecret" -}}
{{- default (printf "%s-pdm-token" (include "continuum.fullname" .)) .Values.pdm.tokenSecret.name -}}
{{- end -}}

{{- define "continuum.apiScheme" -}}
{{- if .Values.api.tls.enabled }}HTTPS{{ else }}HTTP{{ end -}}
{{- end -}}

{{/*
TOML emitter. Helm's toToml turns every number of the values (float64 once parsed) into a
float ("1.0"), which the daemon's integer keys refuse; this one writes whole numbers as
integers, strings as JSON strings (a subset of TOML basic strings), lists as arrays and maps as
inline tables, keys quoted.
*/}}
{{- define "continuum.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (float64 $v) (floor $v) -}}{{- printf "%d" (int64 $v) -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- printf "%d" $v -}}
{{- else if kindIs "slice" $v -}}
[{{- range $i, $e := $v -}}{{- if $i -}}, {{ end -}}{{- include "continuum.toml.value" $e -}}{{- end -}}]
{{- else if kindIs "map" $v -}}
{ {{- range $i, $k := keys $v | sortAlpha -}}{{- if $i -}}, {{ end -}}{{- toJson $k }} = {{ include "continuum.toml.value" (get $v $k) -}}{{- end -}} }
{{- else if kindIs "invalid" $v -}}
{{- fail "TOML has no null: remove the key instead" -}}
{{- else -}}
{{- fail (printf "cannot write a %s as TOML" (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* A top-level table's body: `key = value` lines. */}}
{{- define "continuum.toml.table" -}}
{{- range $k := keys . | sortAlpha }}
{{ toJson $k }} = {{ include "continuum.toml.value" (get $ $k) }}
{{- end -}}
{{- end -}}

{{/* The daemon's configuration as a dict, TOML key names. */}}
{{- define "continuum.configDict" -}}
{{- $v := .Values -}}
{{- $c := dict "region" $v.region "role" $v.role -}}
{{- with $v.config.failpoints }}{{ $_ := set $c "failpoints" . }}{{ end -}}
{{- $_ := set $c "raft" (dict
  "node_id" $v.raft.nodeId
  "listen" (printf "0.0.0.0:%d" (int $v.raft.port))
  "data_dir" "/var/lib/continuum/raft"
  "heartbeat_interval" $v.raft.heartbeatInterval
  "election_timeout_min" $v.raft.electionTimeoutMin
  "election_timeout_max" $v.raft.electionTimeoutMax
  "peers" $v.raft.peers) -}}
{{- $_ := set $c "tls" (dict "cert" "/etc/continuum/tls/tls.crt" "key" "/etc/continuum/tls/tls.key" "ca" "/etc/continuum/tls/ca.crt") -}}
{{- $_ := set $c "lease" $v.config.lease -}}
{{- $api := dict "listen" (printf "0.0.0.0:%d" (int $v.api.port)) "tokens_file" "/etc/continuum/tokens/tokens.toml" -}}
{{- if $v.api.tls.enabled -}}
{{- $_ := set $api "tls_cert" "/etc/continuum/api-tls/tls.crt" -}}
{{- $_ := set $api "tls_key" "/etc/continuum/api-tls/tls.key" -}}
{{- end -}}
{{- $_ := set $c "api" $api -}}
{{- if eq $v.role "data" -}}
{{- $_ := set $c "pdm" (dict "url" $v.pdm.url "token_file" (printf "/etc/continuum/pdm/%s" $v.pdm.tokenSecret.key) "zone" $v.pdm.zone "timeout" $v.pdm.timeout) -}}
{{- $_ := set $c "audit" (merge (dict "log" "/var/lib/continuum/audit.log") $v.config.audit) -}}
{{- $_ := set $c "pairs" $v.config.pairs -}}
{{- end -}}
{{- toJson $c -}}
{{- end -}}

{{/* The TOML file: scalars first, then [tables], then [[arrays of tables]]. */}}
{{- define "continuum.configToml" -}}
{{- $c := include "continuum.configDict" . | fromJson -}}
# Rendered by the continuum chart from its values; see README "Configuration".
{{- range $k := keys $c | sortAlpha }}
{{- $val := get $c $k }}
{{- if not (or (kindIs "map" $val) (and (kindIs "slice" $val) (eq $k "pairs"))) }}
{{ toJson $k }} = {{ include "continuum.toml.value" $val }}
{{- end }}
{{- end }}
{{- range $k := keys $c | sortAlpha }}
{{- $val := get $c $k }}
{{- if kindIs "map" $val }}

[{{ toJson $k }}]
{{- include "continuum.toml.table" $val }}
{{- end }}
{{- end }}
{{- range $p := $c.pairs }}

[["pairs"]]
{{- include "continuum.toml.table" $p }}
{{- end }}
{{ end -}}
