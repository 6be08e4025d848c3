{{- define "es.name" -}}{{ .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end }}
{{- define "es.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{ else }}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}
{{- define "es.labels" -}}
app.kubernetes.io/name: {{ include "es.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}
{{- define "es.selector" -}}
app.kubernetes.io/name: {{ include "es.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "es.serviceAccount" -}}
{{- if .Values.serviceAccount.create }}{{ default (include "es.fullname" .) .Values.serviceAccount.name }}{{ else }}{{ default "default" .Values.serviceAccount.name }}{{ end }}
{{- end }}
{{- define "es.rulesConfigMap" -}}
{{- if .Values.rules.existingConfigMap }}{{ .Values.rules.existingConfigMap }}{{ else }}{{ include "es.fullname" . }}-rules{{ end }}
{{- end }}
{{/* The service config: values.config plus the mounted file paths. */}}
{{- define "es.config" -}}
{{- $rules := dict "file" (printf "/etc/event-sanitizer/rules/%s" .Values.rules.fileName) "hash_key_file" "/var/run/secrets/event-sanitizer/hash-key" "reload_interval" .Values.rules.reloadInterval -}}
{{- $cfg := merge (dict "rules" $rules) (deepCopy .Values.config) -}}
{{- if .Values.secrets.saslPasswordKey -}}
{{- $_ := set $cfg.kafka "sasl_password_file" "/var/run/secrets/event-sanitizer/sasl-password" -}}
{{- end -}}
{{ toYaml $cfg }}
{{- end }}
