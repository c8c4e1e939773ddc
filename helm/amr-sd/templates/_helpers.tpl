{{- define "amr-sd.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "amr-sd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "amr-sd.labels" -}}
app.kubernetes.io/name: {{ include "amr-sd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "amr-sd.commonLabels" . }}
{{- end -}}

{{- /* Labels beside a selector's: a pod template has both, each key once. */}}
{{- define "amr-sd.commonLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "amr-sd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "amr-sd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "amr-sd.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "amr-sd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "amr-sd.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion .Values.variant) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "amr-sd.redisUrl" -}}
{{- if eq .Values.redis.mode "external" -}}
{{- required "redis.url is required when redis.mode is external" .Values.redis.url -}}
{{- else -}}
{{- printf "redis://%s-redis:6379/0" (include "amr-sd.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "amr-sd.apiKeySecret" -}}
{{- if .Values.apiKeys.existingSecret -}}
{{- .Values.apiKeys.existingSecret -}}
{{- else if .Values.apiKeys.keys -}}
{{- printf "%s-api-keys" (include "amr-sd.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- /* nvidia.com/gpu per pod: vLLM uses tensorParallelSize x dataParallelSize GPUs, no more. */}}
{{- define "amr-sd.gpus" -}}
{{- $gpus := mul (int .Values.gpu.tensorParallelSize) (int (.Values.gpu.dataParallelSize | default 1)) -}}
{{- if and (hasKey .Values.gpu "count") (ne (int .Values.gpu.count) (int $gpus)) -}}
{{- fail (printf "gpu.count (%v) must equal gpu.tensorParallelSize x gpu.dataParallelSize (%v), or be left out: vLLM uses exactly that many GPUs" .Values.gpu.count $gpus) -}}
{{- end -}}
{{- $gpus -}}
{{- end -}}
