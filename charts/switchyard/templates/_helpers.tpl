{{/*
Names and labels.
*/}}
{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchyard.fullname" -}}
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

{{- define "switchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of a component's resources: <fullname>-gateway, <fullname>-router (52 characters at
most, so that the StatefulSet's controller-revision-hash label stays within 63). */}}
{{- define "switchyard.componentName" -}}
{{- printf "%s-%s" (include "switchyard.fullname" .root | trunc 44 | trimSuffix "-") .component }}
{{- end }}

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ include "switchyard.chart" . }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchyard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: dict "root" $ "component" "gateway" */}}
{{- define "switchyard.componentSelectorLabels" -}}
{{ include "switchyard.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "switchyard.componentLabels" -}}
{{ include "switchyard.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchyard.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The Secret holding the URLs, API keys and channel secrets. */}}
{{- define "switchyard.secretName" -}}
{{- if .Values.secret.create }}
{{- include "switchyard.fullname" . }}
{{- else }}
{{- default (include "switchyard.fullname" .) .Values.secret.existingSecret }}
{{- end }}
{{- end }}

{{- define "switchyard.configDir" -}}/etc/switchyard/config{{- end }}
{{- define "switchyard.secretDir" -}}/etc/switchyard/secrets{{- end }}

{{/* The container port: the port of config.server.listen ("0.0.0.0:8080", "[::]:8080"). */}}
{{- define "switchyard.containerPort" -}}
{{- $listen := toString .Values.config.server.listen }}
{{- $port := regexFind "[0-9]+$" $listen }}
{{- if or (not $port) (not (regexMatch "^(\\[[0-9A-Fa-f:.]+\\]|[0-9.]+):[0-9]+$" $listen)) }}
{{- fail (printf "config.server.listen must be IP:port, got %q" $listen) }}
{{- end }}
{{- $port | int }}
{{- end }}

{{/* terminationGracePeriodSeconds of a component: dict "root" $ "values" .Values.gateway */}}
{{- define "switchyard.terminationGrace" -}}
{{- $grace := int .root.Values.config.server.shutdown_grace_secs }}
{{- $sleep := int .values.preStopSleepSeconds }}
{{- if kindIs "invalid" .values.terminationGracePeriodSeconds }}
{{- add $sleep $grace 10 }}
{{- else }}
{{- $tgps := int .values.terminationGracePeriodSeconds }}
{{- if le $tgps (add $sleep $grace) }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.server.shutdown_grace_secs (%d), or the pod is killed while it drains" .component $tgps (add $sleep $grace)) }}
{{- end }}
{{- $tgps }}
{{- end }}
{{- end }}

{{/*
Every Secret key the configuration references, as a list (used to check a chart-created Secret
and to print the `kubectl create secret` command in NOTES.txt).
*/}}
{{- define "switchyard.requiredSecretKeys" -}}
{{- $keys := list }}
{{- if not .Values.config.bus.urlSecret.name }}
{{- $keys = append $keys .Values.config.bus.urlSecret.key }}
{{- end }}
{{- if not .Values.config.store.urlSecret.name }}
{{- $keys = append $keys .Values.config.store.urlSecret.key }}
{{- end }}
{{- range .Values.config.auth.api_keys }}
{{- $keys = append $keys .secretKey }}
{{- end }}
{{- range .Values.config.channels }}
{{- range $option, $key := .secretKeys }}
{{- $keys = append $keys $key }}
{{- end }}
{{- end }}
{{- range concat .Values.config.webhooks .Values.config.bots }}
{{- $keys = append $keys .secretKey }}
{{- end }}
{{- toJson (uniq $keys) }}
{{- end }}

{{/* Checks what the schema cannot; fails rendering with a message naming the value. */}}
{{- define "switchyard.validate" -}}
{{- $port := include "switchyard.containerPort" . }}
{{- if and .Values.secret.create .Values.secret.existingSecret }}
{{- fail "secret.create and secret.existingSecret are exclusive: either the chart creates the Secret or you name yours" }}
{{- end }}
{{- if .Values.secret.create }}
{{- range $key := include "switchyard.requiredSecretKeys" . | fromJsonArray }}
{{- if not (get $.Values.secret.data $key) }}
{{- fail (printf "secret.data.%s is missing or empty: the configuration references Secret key %q (secret.create is true)" $key $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not .Values.config.auth.api_keys }}
{{- fail "config.auth.api_keys needs at least one key: pods listen beyond loopback (for the Service and the probes), which Switchyard allows only with an API key" }}
{{- end }}
{{- $channelIds := list }}
{{- $pools := list "default" }}
{{- range .Values.config.pools }}
{{- $pools = append $pools .id }}
{{- end }}
{{- range .Values.config.channels }}
{{- if has .id $channelIds }}
{{- fail (printf "config.channels: channel id %q is used twice" .id) }}
{{- end }}
{{- $channelIds = append $channelIds .id }}
{{- if and .pool (not (has .pool $pools)) }}
{{- fail (printf "config.channels[%s].pool: pool %q is not defined (config.pools: %s)" .id .pool (join ", " $pools)) }}
{{- end }}
{{- $channel := . }}
{{- range $option, $key := .secretKeys }}
{{- if or (hasKey $channel $option) (hasKey $channel (printf "%s_env" $option)) (hasKey $channel (printf "%s_file" $option)) }}
{{- fail (printf "config.channels[%s]: %q is given both inline and in secretKeys" $channel.id $option) }}
{{- end }}
{{- end }}
{{- end }}
{{- $botIds := list }}
{{- range .Values.config.bots }}
{{- $botIds = append $botIds .id }}
{{- end }}
{{- range .Values.config.pools }}
{{- if and .bot (not (has .bot $botIds)) }}
{{- fail (printf "config.pools[%s].bot: bot %q is not in config.bots" .id .bot) }}
{{- end }}
{{- end }}
{{- $routeIds := list }}
{{- range .Values.config.routes }}
{{- if has .id $routeIds }}
{{- fail (printf "config.routes: route id %q is used twice" .id) }}
{{- end }}
{{- $routeIds = append $routeIds .id }}
{{- if not (has .pool $pools) }}
{{- fail (printf "config.routes[%s].pool: pool %q is not defined (config.pools: %s)" .id .pool (join ", " $pools)) }}
{{- end }}
{{- range .channels }}
{{- if not (has . $channelIds) }}
{{- fail (printf "config.routes: channel %q is not in config.channels" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.gateway.autoscaling.enabled (gt (int .Values.gateway.autoscaling.minReplicas) (int .Values.gateway.autoscaling.maxReplicas)) }}
{{- fail "gateway.autoscaling.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- end }}

{{/* A TOML value from a YAML scalar or list of scalars. JSON strings, numbers and booleans are
valid TOML, and JSON's string escapes are TOML's. */}}
{{- define "switchyard.tomlValue" -}}
{{- if kindIs "slice" . }}
{{- $items := list }}
{{- range . }}{{ $items = append $items (toJson .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if kindIs "map" . }}
{{- fail (printf "a configuration value cannot be a table: %s" (toJson .)) }}
{{- else }}
{{- toJson . }}
{{- end }}
{{- end }}

{{/* The TOML configuration. */}}
{{- define "switchyard.configToml" -}}
{{- $c := .Values.config -}}
{{- $secretDir := include "switchyard.secretDir" . -}}
# Rendered by the Helm chart from .Values.config; see docs/configuration.md.
# Secrets are not in this file: the AMQP and Redis URLs come from the environment
# (SWITCHYARD__BUS__URL, SWITCHYARD__STORE__URL), the keys below from files under {{ $secretDir }}.

[server]
listen = {{ toJson (toString $c.server.listen) }}
max_body_bytes = {{ int64 $c.server.max_body_bytes }}
shutdown_grace_secs = {{ int64 $c.server.shutdown_grace_secs }}

[bus]
kind = "amqp"
shards = {{ int64 $c.bus.shards }}
queue_capacity = {{ int64 $c.bus.queue_capacity }}
delivery_limit = {{ int64 $c.bus.delivery_limit }}
publish_timeout_ms = {{ int64 $c.bus.publish_timeout_ms }}
prefetch = {{ int64 $c.bus.prefetch }}
{{- with $c.bus.events_stream_max_age }}
events_stream_max_age = {{ toJson (toString .) }}
{{- end }}
{{- range $key := list "tls_ca_file" "tls_cert_file" "tls_key_file" }}
{{- with index $c.bus $key }}
{{ $key }} = {{ toJson (toString .) }}
{{- end }}
{{- end }}

[store]
kind = "redis"
key_prefix = {{ toJson (toString $c.store.key_prefix) }}
dedupe_ttl_secs = {{ int64 $c.store.dedupe_ttl_secs }}
retention_days = {{ int64 (default 0 $c.store.retention_days) }}
customer_retention_days = {{ int64 (default 0 $c.store.customer_retention_days) }}
{{- range $key := list "tls_ca_file" "tls_cert_file" "tls_key_file" }}
{{- with index $c.store $key }}
{{ $key }} = {{ toJson (toString .) }}
{{- end }}
{{- end }}
{{- with $c.store.sentinel }}
{{- if .master }}

[store.sentinel]
master = {{ toJson (toString .master) }}
nodes = {{ toJson .nodes }}
{{- end }}
{{- end }}

[router]
# instance and instances: set per router pod (SWITCHYARD__ROUTER__INSTANCE, __INSTANCES).
attempts = {{ int64 $c.router.attempts }}
history_limit = {{ int64 $c.router.history_limit }}
max_in_flight = {{ int64 $c.router.max_in_flight }}
standby_delay_ms = {{ int64 $c.router.standby_delay_ms }}
hand_back_shards = {{ $c.router.hand_back_shards }}
presence_ttl_secs = {{ int64 $c.router.presence_ttl_secs }}

[log]
format = {{ toJson (toString $c.log.format) }}
level = {{ toJson (toString $c.log.level) }}
{{- with $c.redaction }}

[redaction]
detectors = {{ include "switchyard.tomlValue" (default (list) .detectors) }}
replacement = {{ toJson (toString .replacement) }}
{{- range .patterns }}

[[redaction.patterns]]
name = {{ toJson (toString .name) }}
regex = {{ toJson (toString .regex) }}
{{- end }}
{{- end }}
{{- range $c.auth.api_keys }}

[[auth.api_keys]]
name = {{ toJson (toString .name) }}
key_file = {{ toJson (printf "%s/%s" $secretDir .secretKey) }}
{{- with .scopes }}
scopes = {{ include "switchyard.tomlValue" . }}
{{- end }}
{{- end }}
{{- range $c.pools }}

[[pools]]
id = {{ toJson (toString .id) }}
{{- with .strategy }}
strategy = {{ toJson (toString .) }}
{{- end }}
{{- with .bot }}
bot = {{ toJson (toString .) }}
{{- end }}
{{- with .bot_timeout_secs }}
bot_timeout_secs = {{ int64 . }}
{{- end }}
{{- with .close_idle_secs }}
close_idle_secs = {{ int64 . }}
{{- end }}
{{- if .prefer_last_agent }}
prefer_last_agent = true
{{- end }}
{{- with .offer_timeout_secs }}
offer_timeout_secs = {{ int64 . }}
{{- end }}
{{- with .answer_timeout_secs }}
answer_timeout_secs = {{ int64 . }}
{{- end }}
{{- if hasKey . "answer_timeout_sets_away" }}
answer_timeout_sets_away = {{ .answer_timeout_sets_away }}
{{- end }}
{{- with .hours }}

[pools.hours]
{{- range $key, $value := . }}
{{ $key }} = {{ include "switchyard.tomlValue" $value }}
{{- end }}
{{- end }}
{{- with .overflow }}

[pools.overflow]
{{- range $key, $value := . }}
{{ $key }} = {{ include "switchyard.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}
{{- range $c.bots }}

[[bots]]
id = {{ toJson (toString .id) }}
url = {{ toJson (toString .url) }}
{{- with .timeout_ms }}
timeout_ms = {{ int64 . }}
{{- end }}
{{- with .concurrency }}
concurrency = {{ int64 . }}
{{- end }}
secret_file = {{ toJson (printf "%s/%s" $secretDir .secretKey) }}
{{- end }}
{{- range $c.channels }}

[[channels]]
id = {{ toJson (toString .id) }}
kind = {{ toJson (toString .kind) }}
{{- with .pool }}
pool = {{ toJson (toString .) }}
{{- end }}
{{- range $option, $value := omit . "id" "kind" "pool" "secretKeys" }}
{{ $option }} = {{ include "switchyard.tomlValue" $value }}
{{- end }}
{{- range $option, $key := .secretKeys }}
{{ $option }}_file = {{ toJson (printf "%s/%s" $secretDir $key) }}
{{- end }}
{{- end }}
{{- range $c.routes }}

[[routes]]
id = {{ toJson (toString .id) }}
pool = {{ toJson (toString .pool) }}
{{- $route := . }}
{{- range $key := list "channels" "channel_kinds" "tenants" "identity_kinds" "text_contains" "customer_tags" "skills" }}
{{- with index $route $key }}
{{ $key }} = {{ include "switchyard.tomlValue" . }}
{{- end }}
{{- end }}
{{- with .text_matches }}
text_matches = {{ toJson (toString .) }}
{{- end }}
{{- with .priority }}
priority = {{ int . }}
{{- end }}
{{- end }}
{{- range $c.webhooks }}

[[webhooks]]
id = {{ toJson (toString .id) }}
url = {{ toJson (toString .url) }}
{{- with .events }}
events = {{ include "switchyard.tomlValue" . }}
{{- end }}
{{- with .timeout_ms }}
timeout_ms = {{ int64 . }}
{{- end }}
{{- with .concurrency }}
concurrency = {{ int64 . }}
{{- end }}
secret_file = {{ toJson (printf "%s/%s" $secretDir .secretKey) }}
{{- end }}
{{ end }}

{{/* The container spec shared by both roles: dict "root" $ "component" "gateway" "values" .Values.gateway */}}
{{- define "switchyard.container" -}}
{{- $root := .root -}}
{{- $values := .values -}}
- name: switchyard
  image: {{ include "switchyard.image" $root | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args:
    - {{ .component | quote }}
    - --config
    - {{ include "switchyard.configDir" $root }}/switchyard.toml
    {{- with $values.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ include "switchyard.containerPort" $root }}
      protocol: TCP
  env:
    - name: SWITCHYARD__BUS__URL
      valueFrom:
        secretKeyRef:
          name: {{ $root.Values.config.bus.urlSecret.name | default (include "switchyard.secretName" $root) | quote }}
          key: {{ $root.Values.config.bus.urlSecret.key | quote }}
    - name: SWITCHYARD__STORE__URL
      valueFrom:
        secretKeyRef:
          name: {{ $root.Values.config.store.urlSecret.name | default (include "switchyard.secretName" $root) | quote }}
          key: {{ $root.Values.config.store.urlSecret.key | quote }}
    {{- if eq .component "router" }}
    # Each router's index among the replicas: the StatefulSet pod index (Kubernetes 1.28+).
    - name: SWITCHYARD__ROUTER__INSTANCE
      valueFrom:
        fieldRef:
          fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
    - name: SWITCHYARD__ROUTER__INSTANCES
      value: {{ $values.replicas | int | quote }}
    {{- end }}
    {{- with $root.Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $root.Values.extraEnvFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if gt (int $values.preStopSleepSeconds) 0 }}
  lifecycle:
    preStop:
      {{- if semverCompare ">=1.30.0-0" $root.Capabilities.KubeVersion.Version }}
      sleep:
        seconds: {{ int $values.preStopSleepSeconds }}
      {{- else }}
      exec:
        command: ["sleep", {{ int $values.preStopSleepSeconds | quote }}]
      {{- end }}
  {{- end }}
  {{- with $values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: config
      mountPath: {{ include "switchyard.configDir" $root }}
      readOnly: true
    - name: secrets
      mountPath: {{ include "switchyard.secretDir" $root }}
      readOnly: true
    - name: tmp
      mountPath: /tmp
    {{- with $root.Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The pod spec shared by both roles (after `spec:` of the pod template). */}}
{{- define "switchyard.podSpec" -}}
{{- $root := .root -}}
{{- $values := .values -}}
serviceAccountName: {{ include "switchyard.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
# No SWITCHYARD_* service-link variables: every SWITCHYARD__ variable is read as a config key.
enableServiceLinks: false
terminationGracePeriodSeconds: {{ include "switchyard.terminationGrace" . }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with $root.Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  {{- include "switchyard.container" . | nindent 2 }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- range . }}
  {{- $constraint := . }}
  {{- if not .labelSelector }}
  {{- $constraint = merge (dict "labelSelector" (dict "matchLabels" (include "switchyard.componentSelectorLabels" $ | fromYaml))) . }}
  {{- end }}
  - {{ toYaml $constraint | indent 4 | trim }}
  {{- end }}
{{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "switchyard.fullname" $root }}
  - name: secrets
    secret:
      secretName: {{ include "switchyard.secretName" $root }}
      defaultMode: 0440
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
  {{- with $root.Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Pod template metadata annotations (checksums, Prometheus, user annotations). */}}
{{- define "switchyard.podAnnotations" -}}
{{- $root := .root -}}
checksum/config: {{ include "switchyard.configToml" $root | sha256sum }}
{{- if $root.Values.secret.create }}
checksum/secret: {{ toJson $root.Values.secret.data | sha256sum }}
{{- end }}
{{- if $root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ include "switchyard.containerPort" $root | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with merge (deepCopy .values.podAnnotations) $root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* An IntOrString value: a number as is, a percentage quoted. */}}
{{- define "switchyard.intOrString" -}}
{{- if kindIs "string" . }}{{ quote . }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}
