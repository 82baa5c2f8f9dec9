{{/* Chart name. */}}
{{- define "rlaif-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of the release's objects. */}}
{{- define "rlaif-operator.fullname" -}}
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

{{- define "rlaif-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rlaif-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rlaif-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rlaif-operator.labels" -}}
helm.sh/chart: {{ include "rlaif-operator.chart" . }}
{{ include "rlaif-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rlaif-operator
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "rlaif-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rlaif-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest. Arguments: (dict "image" <values.image> "chart" .Chart) */}}
{{- define "rlaif-operator.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end }}

{{/* Namespaces that get a trainer ServiceAccount: where stage pods can run. */}}
{{- define "rlaif-operator.trainerNamespaces" -}}
{{- $base := .Values.watchNamespaces | default (list .Release.Namespace) -}}
{{- concat $base .Values.trainer.serviceAccount.extraNamespaces | uniq | toJson -}}
{{- end }}

{{/*
The operator's RBAC rules, shared by the ClusterRole (all-namespaces mode) and the per-namespace
Roles (watchNamespaces mode). They mirror RBAC_RULES in operator/rlaif_operator/rbac.py; a unit test
fails when the two differ. docs/operator-guide.md gives the reason for every rule.
*/}}
{{- define "rlaif-operator.rules" -}}
- apiGroups: ["rlaif.dev"]
  resources: ["rlaifjobs"]
  verbs: ["list", "watch", "delete"]
- apiGroups: ["rlaif.dev"]
  resources: ["rlaifjobs/status"]
  verbs: ["patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
# Multi-node stages (resources.<stage>.nodes > 1) run as JobSets: JobSet (jobset.x-k8s.io) must be
# installed for them; without it these rules grant nothing and such a stage waits (JobSetNotInstalled).
- apiGroups: ["jobset.x-k8s.io"]
  resources: ["jobsets"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# labeler.server: the operator runs the labeler's inference server (vLLM or rlaif-train serve) as a
# Deployment and a Service while a stage that asks the labeler runs.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "watch", "create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.rbac.ownerReferencesPermissionEnforcement }}
# Children's ownerReferences set blockOwnerDeletion; with the OwnerReferencesPermissionEnforcement
# admission plugin (OpenShift enables it) that needs update on the owner's finalizers.
- apiGroups: ["rlaif.dev"]
  resources: ["rlaifjobs/finalizers"]
  verbs: ["update"]
{{- end }}
{{- end }}

{{/* The Lease of leader election (leaderElection.leaseName, default the full name). */}}
{{- define "rlaif-operator.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (include "rlaif-operator.fullname" .) -}}
{{- end }}
