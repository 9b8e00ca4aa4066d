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

{{/* Services' names. */}}
{{- define "toposnap.extenderService" -}}
{{- include "toposnap.componentName" (dict "root" . "component" "extender") -}}
{{- end -}}

{{- define "toposnap.extenderTLSSecret" -}}
{{- include "toposnap.componentName" (dict "root" . "component" "extender-tls") -}}
{{- end -}}

{{/* Non-empty when the extender serves HTTPS (extender.tls.enabled). */}}
{{- define "toposnap.extenderTLS" -}}
{{- if and .Values.extender.enabled .Values.extender.tls.enabled -}}true{{- end -}}
{{- end -}}

{{/* The extender's Service DNS name, which its serving certificate names. */}}
{{- define "toposnap.extenderHost" -}}
{{- printf "%s.%s.svc" (include "toposnap.extenderService" .) .Release.Namespace -}}
{{- end -}}

{{- define "toposnap.extenderURL" -}}
{{- printf "%s://%s:%d" (ternary "https" "http" (eq (include "toposnap.extenderTLS" .) "true")) (include "toposnap.extenderHost" .) (int .Values.extender.port) -}}
{{- end -}}

{{- define "toposnap.webhookService" -}}
{{- include "toposnap.componentName" (dict "root" . "component" "webhook") -}}
{{- end -}}

{{- define "toposnap.webhookTLSSecret" -}}
{{- include "toposnap.componentName" (dict "root" . "component" "webhook-tls") -}}
{{- end -}}

{{/*
A CA and a serving pair for a Service when the chart makes them (no
cert-manager): read back from the existing Secret so upgrades keep them
byte for byte, generated only when the Secret is missing or incomplete.
Computed once per render (kept in the root context under .key) so the
Secret and everything that trusts the CA agree. The CA's key is never
kept: nothing signs with it after this render. Call with (dict "root" $
"service" name "secret" name "days" n "key" cacheKey); returns YAML with
caCert, cert, key. With "client" name: a client pair of that common name
under a CA of its own instead (<service>-client-ca).
*/}}
{{- define "toposnap.servingCerts" -}}
{{- $root := .root -}}
{{- if not (hasKey $root .key) -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace .secret -}}
{{- $data := dict -}}
{{- if $existing -}}{{- $data = default (dict) $existing.data -}}{{- end -}}
{{- $certs := dict -}}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") -}}
{{- $certs = dict "caCert" (index $data "ca.crt" | b64dec) "cert" (index $data "tls.crt" | b64dec) "key" (index $data "tls.key" | b64dec) -}}
{{- else -}}
{{- $service := .service -}}
{{- $namespace := $root.Release.Namespace -}}
{{- $days := int .days -}}
{{- if .client -}}
{{- $ca := genCA (printf "%s-client-ca" $service) $days -}}
{{- $client := genSignedCert .client nil nil $days $ca -}}
{{- $certs = dict "caCert" $ca.Cert "cert" $client.Cert "key" $client.Key -}}
{{- else -}}
{{- $ca := genCA (printf "%s-ca" $service) $days -}}
{{- $dnsNames := list $service (printf "%s.%s" $service $namespace) (printf "%s.%s.svc" $service $namespace) (printf "%s.%s.svc.cluster.local" $service $namespace) -}}
{{- $serving := genSignedCert (printf "%s.%s.svc" $service $namespace) nil $dnsNames $days $ca -}}
{{- $certs = dict "caCert" $ca.Cert "cert" $serving.Cert "key" $serving.Key -}}
{{- end -}}
{{- end -}}
{{- $_ := set $root .key $certs -}}
{{- end -}}
{{- toYaml (get $root .key) -}}
{{- end -}}

{{/* The webhook's chart-made CA and serving pair (see toposnap.servingCerts). */}}
{{- define "toposnap.webhookCerts" -}}
{{- include "toposnap.servingCerts" (dict "root" . "service" (include "toposnap.webhookService" .) "secret" (include "toposnap.webhookTLSSecret" .) "days" .Values.webhook.certValidityDays "key" "toposnapWebhookCerts") -}}
{{- end -}}

{{/*
The extender's chart-made CA and serving pair: a CA of its own, not the
webhook's (the webhook's CA key is not kept, the webhook may be disabled,
and a CA trusted by kube-scheduler for the extender should vouch for
nothing else).
*/}}
{{- define "toposnap.extenderCerts" -}}
{{- include "toposnap.servingCerts" (dict "root" . "service" (include "toposnap.extenderService" .) "secret" (include "toposnap.extenderTLSSecret" .) "days" .Values.extender.tls.certValidityDays "key" "toposnapExtenderCerts") -}}
{{- end -}}

{{- define "toposnap.extenderClientSecret" -}}
{{- include "toposnap.componentName" (dict "root" . "component" "extender-client-tls") -}}
{{- end -}}

{{/*
The schedulers' chart-made client CA and pair: a CA of its own that signs
nothing but this one certificate (its key is not kept), so the extender,
trusting it, admits only holders of this pair.
*/}}
{{- define "toposnap.extenderClientCerts" -}}
{{- include "toposnap.servingCerts" (dict "root" . "service" (include "toposnap.extenderService" .) "secret" (include "toposnap.extenderClientSecret" .) "days" .Values.extender.tls.certValidityDays "key" "toposnapExtenderClientCerts" "client" "toposnap-scheduler") -}}
{{- end -}}

{{/*
Non-empty when the extender requires a client certificate
(extender.tls.clientAuth.required; auto: when toposnap-scheduler, which
the chart configures to present one, is the only scheduler it knows of).
dig: a release upgraded with --reuse-values has no clientAuth key.
*/}}
{{- define "toposnap.extenderClientAuth" -}}
{{- $required := toString (dig "clientAuth" "required" "auto" .Values.extender.tls) -}}
{{- if include "toposnap.extenderTLS" . -}}
{{- if or (eq $required "true") (and (eq $required "auto") .Values.scheduler.enabled (not .Values.extender.managedResource.defaultScheduler)) -}}true{{- end -}}
{{- else if and .Values.extender.enabled (eq $required "true") -}}
{{- fail "extender.tls.clientAuth.required=true needs extender.tls.enabled=true: client certificates are checked in the TLS handshake" -}}
{{- end -}}
{{- end -}}

{{/* Where toposnap-scheduler reads its client pair for the extender. */}}
{{- define "toposnap.extenderClientDir" -}}/etc/kubernetes/toposnap-extender-client{{- end -}}

{{/*
The Lease toposnap-controller's replicas elect their leader with, in the
release namespace: passed as --leader-election-lease and named in its Role.
*/}}
{{- define "toposnap.controllerLease" -}}toposnap-controller{{- end -}}

{{/* The probe and metrics ports (dig: --reuse-values releases lack them). */}}
{{- define "toposnap.extenderHealthPort" -}}{{- dig "healthPort" 8098 .Values.extender -}}{{- end -}}
{{- define "toposnap.webhookHealthPort" -}}{{- dig "healthPort" 9444 .Values.webhook -}}{{- end -}}

{{/*
Where toposnap-scheduler reads the extender's CA with cert-manager (the
CA is not known when rendering): ca.crt of the serving Secret, which
cert-manager's CA Issuer fills. Beside the configuration's mount, not
under it: a mount point cannot be made inside a configMap volume.
*/}}
{{- define "toposnap.extenderCADir" -}}/etc/kubernetes/toposnap-extender-ca{{- end -}}

{{/*
The tlsConfig of the scheduler's extender entry: the chart-made CA inline
(caData, so a new CA changes the configuration and rolls the scheduler),
or the CA file cert-manager keeps in the mounted Secret; and the client
pair toposnap-scheduler presents.
*/}}
{{- define "toposnap.extenderTLSConfig" -}}
{{- if .Values.extender.tls.certManager.enabled -}}
caFile: {{ include "toposnap.extenderCADir" . }}/ca.crt
{{- else -}}
caData: {{ (include "toposnap.extenderCerts" . | fromYaml).caCert | b64enc }}
{{- end }}
# The client pair the extender may require (extender.tls.clientAuth),
# mounted from Secret {{ include "toposnap.extenderClientSecret" . }}; reloaded when it changes.
certFile: {{ include "toposnap.extenderClientDir" . }}/tls.crt
keyFile: {{ include "toposnap.extenderClientDir" . }}/tls.key
{{- end -}}

{{/*
cert-manager objects for a Service's serving certificate: a CA Certificate
signed by the chart's self-signed Issuer, an Issuer of that CA, and the
serving Certificate in the Secret the component mounts. Call with (dict
"root" $ "component" name "service" name "secret" name "labels" labels
"certManager" values).
*/}}
{{- define "toposnap.certManagerChain" -}}
{{- $root := .root -}}
{{- $namespace := $root.Release.Namespace -}}
{{- $ca := include "toposnap.componentName" (dict "root" $root "component" (printf "%s-ca" .component)) -}}
{{- $service := .service -}}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ $ca }}
  namespace: {{ $namespace }}
  labels:
    {{- .labels | nindent 4 }}
spec:
  isCA: true
  commonName: {{ $ca }}
  secretName: {{ $ca }}
  duration: {{ .certManager.caDuration }}
  privateKey:
    algorithm: ECDSA
    size: 256
  issuerRef:
    group: cert-manager.io
    kind: Issuer
    name: {{ include "toposnap.componentName" (dict "root" $root "component" "selfsigned") }}
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: {{ $ca }}
  namespace: {{ $namespace }}
  labels:
    {{- .labels | nindent 4 }}
spec:
  ca:
    secretName: {{ $ca }}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ .secret }}
  namespace: {{ $namespace }}
  labels:
    {{- .labels | nindent 4 }}
spec:
  secretName: {{ .secret }}
  duration: {{ .certManager.duration }}
  renewBefore: {{ .certManager.renewBefore }}
  commonName: {{ printf "%s.%s.svc" $service $namespace }}
  dnsNames:
    - {{ $service }}
    - {{ printf "%s.%s" $service $namespace }}
    - {{ printf "%s.%s.svc" $service $namespace }}
    - {{ printf "%s.%s.svc.cluster.local" $service $namespace }}
  usages:
    - server auth
    - digital signature
    - key encipherment
  privateKey:
    algorithm: ECDSA
    size: 256
  issuerRef:
    group: cert-manager.io
    kind: Issuer
    name: {{ $ca }}
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
    {{- include "toposnap.managedResources" . | nindent 4 }}
    {{- if include "toposnap.extenderTLS" . }}
    # https in urlPrefix is what makes the scheduler use TLS; enableHTTPS
    # is left unset: without a CA it would turn verification off.
    tlsConfig:
      {{- include "toposnap.extenderTLSConfig" . | nindent 6 }}
    {{- end }}
{{- end -}}

{{/*
Non-empty when the webhook moves pods using toposnap volumes to the second
scheduler (webhook --scheduler-name and the pod-scheduler.toposnap.io hook).
*/}}
{{- define "toposnap.routePods" -}}
{{- if and .Values.scheduler.enabled .Values.webhook.routePodsToScheduler -}}true{{- end -}}
{{- end -}}

{{/*
The schedulers (comma-separated) that list extender.managedResource.name
under managedResources with ignoredByScheduler: true, so the webhook gives
that resource to pods using toposnap volumes bound for them: the second
scheduler (configured so by this chart) and, once its operator says so, the
default one. Empty: no pod gets the resource.
*/}}
{{- define "toposnap.resourceSchedulers" -}}
{{- $names := list -}}
{{- if and .Values.extender.enabled .Values.webhook.enabled -}}
{{- if .Values.extender.managedResource.defaultScheduler -}}{{- $names = append $names "default-scheduler" -}}{{- end -}}
{{- if .Values.scheduler.enabled -}}{{- $names = append $names .Values.scheduler.name -}}{{- end -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{/* The managedResources entry of an extender config (toposnap-scheduler's and the NOTES snippet). */}}
{{- define "toposnap.managedResources" -}}
# Only pods the webhook gave this resource (those using toposnap volumes)
# are sent to the extender; nodes are not asked to have it.
managedResources:
  - name: {{ .Values.extender.managedResource.name }}
    ignoredByScheduler: true
{{- end -}}

{{/*
The first validation of every node admission policy: the node pod's
requests carry the name of the node the pod runs on (a bound token's user
extra authentication.kubernetes.io/node-name, present since 1.30). A token
minted for the ServiceAccount outside a pod (kubectl create token) has
none and may write nothing, so it cannot get around the per-node rules.
*/}}
{{- define "toposnap.nodeBoundToken" -}}
- expression: "variables.nodeName != ''"
  reason: Forbidden
  message: "requests of the toposnap node ServiceAccount must use a token bound to a pod on a node (user extra authentication.kubernetes.io/node-name)"
{{- end -}}
