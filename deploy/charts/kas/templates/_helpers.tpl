{{/* Names, labels and shared pieces of the kas chart. */}}

{{- define "kas.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name; component names append to it (at most 50 characters, so 63 with a suffix). */}}
{{- define "kas.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains (include "kas.name" .) .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "kas.name" .) | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of a component: (dict "root" $ "component" "controlplane"). */}}
{{- define "kas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kas.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of a component's objects. */}}
{{- define "kas.labels" -}}
{{ include "kas.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kas
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kas.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "kas.keysSecretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-keys" (include "kas.fullname" .)) -}}
{{- end -}}

{{- define "kas.databaseSecretName" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "kas.fullname" .)) -}}
{{- end -}}

{{/* Whether a role that uses PostgreSQL runs: the control plane, the migrations or gc. */}}
{{- define "kas.usesDatabase" -}}
{{- if or .Values.controlplane.enabled .Values.migrations.enabled .Values.gc.enabled -}}true{{- end -}}
{{- end -}}

{{/*
A key's Secret data: the value already in the cluster (so upgrades keep
it), else 32 new random bytes as base64 text (the key file's format),
base64-encoded again for the Secret. (list $ "api_secret_key").
*/}}
{{- define "kas.keyData" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $old := lookup "v1" "Secret" $root.Release.Namespace (include "kas.keysSecretName" $root) -}}
{{- if and $old $old.data (hasKey $old.data $key) -}}
{{- index $old.data $key -}}
{{- else -}}
{{- randBytes 32 | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Where the keys are mounted. */}}
{{- define "kas.keysDir" -}}/etc/kas/secrets{{- end -}}

{{/* Settings every kas container gets. */}}
{{- define "kas.commonEnv" -}}
- name: KAS_OBSERVABILITY_LOG_LEVEL
  value: {{ .Values.log.level | quote }}
- name: KAS_OBSERVABILITY_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{- end -}}

{{/* The database URL, for the roles that use PostgreSQL. */}}
{{- define "kas.databaseEnv" -}}
- name: KAS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "kas.databaseSecretName" . }}
      key: {{ if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}url{{ end }}
{{- end -}}

{{/* Both key files, for the control plane and gc. */}}
{{- define "kas.keysEnv" -}}
- name: KAS_API_SECRET_KEY_FILE
  value: {{ include "kas.keysDir" . }}/api_secret_key
- name: KAS_PRIVATE_API_SECRET_KEY_FILE
  value: {{ include "kas.keysDir" . }}/private_api_secret_key
{{- end -}}

{{/* The keys volume: (list $ "api_secret_key" "private_api_secret_key") mounts the keys named. */}}
{{- define "kas.keysVolume" -}}
{{- $root := index . 0 -}}
- name: keys
  secret:
    secretName: {{ include "kas.keysSecretName" $root }}
    defaultMode: 0440
    items:
      {{- range $key := rest . }}
      - key: {{ $key }}
        path: {{ $key }}
      {{- end }}
{{- end -}}

{{/* The container's security context and the writable /tmp of a read-only root file system. */}}
{{- define "kas.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "kas.volumeMounts" -}}
- name: keys
  mountPath: {{ include "kas.keysDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Pod-level fields every kas pod shares. */}}
{{- define "kas.podSpecCommon" -}}
automountServiceAccountToken: false
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}
