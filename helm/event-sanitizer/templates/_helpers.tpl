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
{{- define "es.auditorSelector" -}}
app.kubernetes.io/name: {{ include "es.name" . }}-auditor
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
{{- if .Values.rules.shadowFileName -}}
{{- $_ := set $rules "shadow_file" (printf "/etc/event-sanitizer/rules/%s" .Values.rules.shadowFileName) -}}
{{- end -}}
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
{{- if .Values.auditor.groupId -}}
{{- $_ := set $cfg "audit" (dict "group_id" .Values.auditor.groupId) -}}
{{- end -}}
{{- if .Values.canary.intervalSeconds -}}
{{- $c := dict "interval" .Values.canary.intervalSeconds -}}
{{- if .Values.canary.topic -}}{{- $_ := set $c "topic" .Values.canary.topic -}}{{- end -}}
{{- $_ := set $cfg "canary" $c -}}
{{- end -}}
{{- if .Values.webhooks.enabled -}}
{{- $w := .Values.webhooks -}}
{{- $wc := dict "listen" (printf "0.0.0.0:%v" $w.port) "path" $w.path "topic" $w.topic "rules" (printf "/etc/event-sanitizer/rules/%s" $w.rulesFileName) "signing_key_files" (list "/var/run/secrets/event-sanitizer-webhooks/signing-keys") "max_body_bytes" $w.maxBodyBytes "max_age" $w.maxAge "ack_timeout" $w.ackTimeout -}}
{{- /* Without a key of their own, webhook digests follow the events' key (ring). */ -}}
{{- $_ := set $cfg "webhooks" $wc -}}
{{- end -}}
{{ toYaml $cfg }}
{{- end }}

{{/* The mounts of the service's container (and the auditor's). */}}
{{- define "es.volumeMounts" -}}
- { name: config, mountPath: /etc/event-sanitizer/config, readOnly: true }
# A directory mount (no subPath) so ConfigMap updates reach the pod.
- { name: rules, mountPath: /etc/event-sanitizer/rules, readOnly: true }
- { name: secrets, mountPath: /var/run/secrets/event-sanitizer, readOnly: true }
{{- if .Values.webhooks.enabled }}
- { name: webhook-keys, mountPath: /var/run/secrets/event-sanitizer-webhooks, readOnly: true }
{{- end }}
{{- if .Values.tls.enabled }}
- { name: tls, mountPath: /var/run/secrets/event-sanitizer-tls, readOnly: true }
{{- end }}
{{- if .Values.audit.enabled }}
- { name: audit, mountPath: /var/log/event-sanitizer }
{{- end }}
- { name: tmp, mountPath: /tmp }
{{- with .Values.extraVolumeMounts }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}

{{/* The volumes behind es.volumeMounts. */}}
{{- define "es.volumes" -}}
- name: config
  configMap:
    name: {{ include "es.fullname" . }}-config
- name: rules
  configMap:
    name: {{ include "es.rulesConfigMap" . }}
- name: secrets
  secret:
    secretName: {{ .Values.secrets.existingSecret }}
    items:
      {{- if .Values.secrets.hashKeysKey }}
      - { key: {{ .Values.secrets.hashKeysKey }}, path: hash-keys }
      {{- else }}
      - { key: {{ .Values.secrets.hashKeyKey }}, path: hash-key }
      {{- end }}
      {{- if .Values.deadLetters.encrypt }}
      - { key: {{ .Values.deadLetters.keysKey }}, path: dead-letter-keys }
      {{- end }}
      {{- if .Values.secrets.saslPasswordKey }}
      - { key: {{ .Values.secrets.saslPasswordKey }}, path: sasl-password }
      {{- end }}
{{- if .Values.webhooks.enabled }}
- name: webhook-keys
  secret:
    secretName: {{ .Values.webhooks.signingKeysSecret }}
    items:
      - { key: {{ .Values.webhooks.signingKeysKey }}, path: signing-keys }
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
    items:
      - { key: {{ .Values.tls.caKey }}, path: {{ .Values.tls.caKey }} }
      {{- if .Values.tls.certKey }}
      - { key: {{ .Values.tls.certKey }}, path: {{ .Values.tls.certKey }} }
      - { key: {{ .Values.tls.keyKey }}, path: {{ .Values.tls.keyKey }} }
      {{- end }}
{{- end }}
{{- if .Values.audit.enabled }}
- name: audit
  emptyDir: { sizeLimit: {{ .Values.audit.sizeLimit }} }
{{- end }}
- name: tmp
  emptyDir: { sizeLimit: 16Mi }
{{- with .Values.extraVolumes }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}
