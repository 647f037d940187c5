{{- define "streambus.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streambus.operatorName" -}}
{{- printf "%s-operator" (include "streambus.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streambus.serviceAccountName" -}}
{{- default (include "streambus.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "streambus.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "streambus.labels" -}}
app.kubernetes.io/name: streambus-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "streambus.selectorLabels" -}}
app.kubernetes.io/name: streambus-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streambus.externalClusters" -}}
{{- $pairs := list -}}
{{- range $name, $addr := .Values.operator.externalClusters -}}
{{- $pairs = append $pairs (printf "%s=%s" $name $addr) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
