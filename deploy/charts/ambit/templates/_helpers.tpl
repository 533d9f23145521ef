{{/* Standard labels on every object; "component" names the part of Ambit. */}}
{{- define "ambit.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: ambit
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: ambit
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels: stable across upgrades (a selector cannot change). */}}
{{- define "ambit.selector" -}}
app.kubernetes.io/name: ambit
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ambit.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "ambit.agentName" -}}ambit-node-agent{{- end }}
{{- define "ambit.identityName" -}}ambit-identity{{- end }}

{{/* The identity CA's address as agents dial it: the fixed ClusterIP when one is set (no DNS), else the Service's DNS name. */}}
{{- define "ambit.caURL" -}}
{{- if .Values.identity.service.clusterIP -}}
https://{{ .Values.identity.service.clusterIP }}:{{ .Values.identity.port }}
{{- else -}}
https://ambit-identity.{{ .Release.Namespace }}.svc:{{ .Values.identity.port }}
{{- end }}
{{- end }}

{{/* Bring-your-own issuer: both halves or neither. */}}
{{- define "ambit.byoIssuer" -}}
{{- $tls := .Values.identity.issuer.tls -}}
{{- if and $tls.crtPEM (not $tls.keyPEM) -}}
{{- fail "identity.issuer.tls.keyPEM is empty but identity.issuer.tls.crtPEM is set: give the issuer's certificate and key together, or neither (the CA then generates a root)" -}}
{{- end -}}
{{- if and $tls.keyPEM (not $tls.crtPEM) -}}
{{- fail "identity.issuer.tls.crtPEM is empty but identity.issuer.tls.keyPEM is set: give the issuer's certificate and key together, or neither (the CA then generates a root)" -}}
{{- end -}}
{{- if $tls.crtPEM -}}true{{- end -}}
{{- end }}
