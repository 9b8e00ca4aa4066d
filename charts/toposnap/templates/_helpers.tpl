{{/*
Names. The CSI driver name and the binaries' paths are fixed by the code.
*/}}
{{- define "toposnap.driverName" -}}csi.toposnap.io{{- end -}}

{{- define "toposnap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "toposnap.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's object name: <fullname>-<component>, at most 63 characters. */}}
{{- define "toposnap.componentName" -}}
{{- printf "%s-%s" (include "toposnap.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "toposnap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "toposnap.labels" -}}
helm.sh/chart: {{ include "toposnap.chart" . }}
app.kubernetes.io/name: {{ include "toposnap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of a component's objects: call with (dict "root" $ "component" "x"). */}}
{{- define "toposnap.componentLabels" -}}
{{ include "toposnap.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels of a component's pods (immutable in Deployments). */}}
{{- define "toposnap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "toposnap.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The toposnap image. */}}
{{- define "toposnap.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Security context of a container that needs neither root nor any capability. */}}
{{- define "toposnap.restrictedSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Security context of a node container that talks to the driver's socket: the
socket is root's (0755), so it runs as uid 0, but without any capability,
privilege escalation or writable root filesystem.
*/}}
{{- define "toposnap.nodeSidecarSecurityContext" -}}
runAsUser: 0
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Services' DNS names. */}}
{{- define "toposnap.extenderURL" -}}
{{- printf "http://%s.%s.svc:%d" (include "toposnap.componentName" (dict "root" . "component" "extender")) .Release.Namespace (int .Values.extender.port) -}}
{{- end -}}

{{- define "toposnap.webhookService" -}}
{{- include "toposnap.componentName" (dict "root" . "component" "webhook") -}}
{{- end -}}

{{- define "toposnap.webhookTLSSecret" -}}
{{- include "toposnap.componentName" (dict "root" . "component" "webhook-tls") -}}
{{- end -}}

{{/*
The webhook's CA and serving pair when the chart makes them (no
cert-manager): read back from the existing Secret so upgrades keep them
byte for byte, generated only when the Secret is missing or incomplete.
Computed once per render (kept in the root context) so the Secret and both
webhook configurations agree. Returns YAML with caCert, cert, key.
*/}}
{{- define "toposnap.webhookCerts" -}}
{{- if not (hasKey . "toposnapWebhookCerts") -}}
{{- $secretName := include "toposnap.webhookTLSSecret" . -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName -}}
{{- $data := dict -}}
{{- if $existing -}}{{- $data = default (dict) $existing.data -}}{{- end -}}
{{- $certs := dict -}}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") -}}
{{- $certs = dict "caCert" (index $data "ca.crt" | b64dec) "cert" (index $data "tls.crt" | b64dec) "key" (index $data "tls.key" | b64dec) -}}
{{- else -}}
{{- $service := include "toposnap.webhookService" . -}}
{{- $days := int .Values.webhook.certValidityDays -}}
{{- $ca := genCA (printf "%s-ca" $service) $days -}}
{{- $dnsNames := list $service (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc" $service .Release.Namespace) (printf "%s.%s.svc.cluster.local" $service .Release.Namespace) -}}
{{- $serving := genSignedCert (printf "%s.%s.svc" $service .Release.Namespace) nil $dnsNames $days $ca -}}
{{- $certs = dict "caCert" $ca.Cert "cert" $serving.Cert "key" $serving.Key -}}
{{- end -}}
{{- $_ := set . "toposnapWebhookCerts" $certs -}}
{{- end -}}
{{- toYaml (get . "toposnapWebhookCerts") -}}
{{- end -}}

{{/* The caBundle (base64) of the webhook configurations, or nothing with cert-manager. */}}
{{- define "toposnap.webhookCABundle" -}}
{{- if not .Values.webhook.certManager.enabled -}}
{{- (include "toposnap.webhookCerts" . | fromYaml).caCert | b64enc -}}
{{- end -}}
{{- end -}}

{{/* The KubeSchedulerConfiguration of toposnap-scheduler. */}}
{{- define "toposnap.schedulerConfig" -}}
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: true
  resourceLock: leases
  resourceName: {{ .Values.scheduler.name }}
  resourceNamespace: {{ .Release.Namespace }}
profiles:
  - schedulerName: {{ .Values.scheduler.name }}
extenders:
  - urlPrefix: {{ include "toposnap.extenderURL" . }}
    filterVerb: filter
    prioritizeVerb: prioritize
    weight: {{ .Values.extender.weight }}
    # Node names in, node names out: far faster than whole Node objects.
    nodeCacheCapable: true
    ignorable: {{ .Values.scheduler.extenderIgnorable }}
    httpTimeout: {{ .Values.extender.httpTimeout }}
{{- end -}}

{{/*
Non-empty when the webhook moves pods using toposnap volumes to the second
scheduler (webhook --scheduler-name and the pod-scheduler.toposnap.io hook).
*/}}
{{- define "toposnap.routePods" -}}
{{- if and .Values.scheduler.enabled .Values.webhook.routePodsToScheduler -}}true{{- end -}}
{{- end -}}
