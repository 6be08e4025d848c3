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
{{- define "es.image" -}}
{{- if .Values.image.digest -}}{{ .Values.image.repository }}@{{ .Values.image.digest }}{{- else -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- end }}
{{- define "es.rulesConfigMap" -}}
{{- if .Values.rules.existingConfigMap }}{{ .Values.rules.existingConfigMap }}{{ else }}{{ include "es.fullname" . }}-rules{{ end }}
{{- end }}
{{/* The service config: values.config plus the mounted file paths. */}}
{{- define "es.config" -}}
{{- $rules := dict "file" (printf "/etc/event-sanitizer/rules/%s" .Values.rules.fileName) "reload_interval" .Values.rules.reloadInterval -}}
{{- if .Values.secrets.hashKeysKey -}}
{{- $_ := set $rules "hash_keys_file" "/var/run/secrets/event-sanitizer/hash-keys" -}}
{{- else -}}
{{- $_ := set $rules "hash_key_file" "/var/run/secrets/event-sanitizer/hash-key" -}}
{{- end -}}
{{- $cfg := merge (dict "rules" $rules) (deepCopy .Values.config) -}}
{{- $_ := set $cfg "http" (dict "listen" (printf "0.0.0.0:%v" .Values.service.port)) -}}
{{- if .Values.tls.enabled -}}
{{- $t := .Values.tls -}}
{{- $common := default (dict) $cfg.kafka.common -}}
{{- $_ := set $common "ssl.ca.location" (printf "/var/run/secrets/event-sanitizer-tls/%s" $t.caKey) -}}
{{- if $t.certKey -}}
{{- $_ := set $common "ssl.certificate.location" (printf "/var/run/secrets/event-sanitizer-tls/%s" $t.certKey) -}}
{{- $_ := set $common "ssl.key.location" (printf "/var/run/secrets/event-sanitizer-tls/%s" $t.keyKey) -}}
{{- end -}}
{{- if not (hasKey $common "security.protocol") -}}
{{- $_ := set $common "security.protocol" "ssl" -}}
{{- end -}}
{{- $_ := set $cfg.kafka "common" $common -}}
{{- end -}}
{{- if .Values.audit.enabled -}}
{{- $log := default (dict) $cfg.log -}}
{{- $_ := set $log "audit_file" "/var/log/event-sanitizer/audit.jsonl" -}}
{{- $_ := set $cfg "log" $log -}}
{{- end -}}
{{- if .Values.secrets.saslPasswordKey -}}
{{- $_ := set $cfg.kafka "sasl_password_file" "/var/run/secrets/event-sanitizer/sasl-password" -}}
{{- end -}}
{{- if .Values.deadLetters.encrypt -}}
{{- $_ := set $cfg "dead_letters" (dict "keys_file" "/var/run/secrets/event-sanitizer/dead-letter-keys") -}}
{{- else -}}
{{- $_ := set $cfg "dead_letters" (dict "encrypt" false) -}}
{{- end -}}
{{- if .Values.privacy.enabled -}}
{{- $_ := set $cfg "privacy" (dict "requests_topic" .Values.privacy.requestsTopic) -}}
{{- end -}}
{{- if .Values.webhooks.enabled -}}
{{- $w := .Values.webhooks -}}
{{- $wc := dict "listen" (printf "0.0.0.0:%v" $w.port) "path" $w.path "topic" $w.topic "rules" (printf "/etc/event-sanitizer/rules/%s" $w.rulesFileName) "signing_key_files" (list "/var/run/secrets/event-sanitizer-webhooks/signing-keys") "max_body_bytes" $w.maxBodyBytes "max_age" $w.maxAge "ack_timeout" $w.ackTimeout -}}
{{- /* Without a key of their own, webhook digests follow the events' key (ring). */ -}}
{{- $_ := set $cfg "webhooks" $wc -}}
{{- end -}}
{{ toYaml $cfg }}
{{- end }}
