{{- define "cnpg-pair.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cnpg-pair.external" -}}
{{- $r := .r -}}
- name: {{ $r.name }}
  connectionParameters:
    host: {{ $r.host | quote }}
    port: {{ $r.port | quote }}
    user: {{ .root.Values.replication.user }}
    dbname: {{ .root.Values.replication.dbname }}
    sslmode: {{ .root.Values.replication.sslMode }}
    # This Cluster's designated primary streams as its own name, which the other Cluster lists
    # in standbyNamesPre.
    application_name: {{ .self }}
  sslKey:
    name: {{ default (printf "%s-replication" $r.name) $r.replicationSecret }}
    key: tls.key
  sslCert:
    name: {{ default (printf "%s-replication" $r.name) $r.replicationSecret }}
    key: tls.crt
  sslRootCert:
    name: {{ default (printf "%s-ca" $r.name) $r.caSecret }}
    key: ca.crt
{{- end -}}
