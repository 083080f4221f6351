{{/*
Names, labels and the pieces several templates share. Every object name and label comes from
here.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "protege.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart> (the release alone when it already holds the chart name), truncated
for DNS. */}}
{{- define "protege.fullname" -}}
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

{{/* The name of one component's objects: (dict "ctx" $ "component" "gateway"). */}}
{{- define "protege.componentName" -}}
{{- printf "%s-%s" (include "protege.fullname" .ctx | trunc 50 | trimSuffix "-") .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Names of the shared objects. */}}
{{- define "protege.configName" -}}
{{- include "protege.componentName" (dict "ctx" . "component" "config") -}}
{{- end -}}

{{- define "protege.dashboardsName" -}}
{{- include "protege.componentName" (dict "ctx" . "component" "dashboards") -}}
{{- end -}}

{{/* The autopilot's own ServiceAccount: the only one allowed to manage training Jobs. */}}
{{- define "protege.autopilotName" -}}
{{- include "protege.componentName" (dict "ctx" . "component" "autopilot") -}}
{{- end -}}

{{/* Where the autopilot finds the Job it launches for each run. */}}
{{- define "protege.autopilotJobPath" -}}/etc/protege/autopilot/job.yaml{{- end -}}

{{- define "protege.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "protege.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The name of a task's trainer objects: (dict "ctx" $ "task" "tickets" "suffix" ""). */}}
{{- define "protege.trainName" -}}
{{- $task := .task | lower | replace "_" "-" | replace "." "-" -}}
{{- $base := printf "%s-train-%s" (include "protege.fullname" .ctx | trunc 30 | trimSuffix "-") $task -}}
{{- printf "%s%s" ($base | trunc (sub 52 (len .suffix) | int) | trimSuffix "-") .suffix -}}
{{- end -}}

{{/* Labels on every object: (dict "ctx" $ "component" "gateway"). */}}
{{- define "protege.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "protege.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: protege
{{- end -}}

{{/* Labels of a task's training objects: (dict "ctx" $ "task" "tickets"); an empty task (the
autopilot's Job template) leaves protege/task to whoever launches the run. */}}
{{- define "protege.trainerLabels" -}}
{{ include "protege.labels" (dict "ctx" .ctx "component" "trainer") }}
{{- with .task }}
protege/task: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Labels of the dashboards ConfigMap: the chart's, and the one Grafana's sidecar watches. */}}
{{- define "protege.dashboardLabels" -}}
{{ include "protege.labels" (dict "ctx" . "component" "dashboards") }}
{{ .Values.monitoring.dashboards.label }}: {{ .Values.monitoring.dashboards.labelValue | quote }}
{{- end -}}

{{/* Labels that select one component's pods: (dict "ctx" $ "component" "gateway"). */}}
{{- define "protege.selectorLabels" -}}
app.kubernetes.io/name: {{ include "protege.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The Protégé image, and the trainer's. */}}
{{- define "protege.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "protege.trainerImage" -}}
{{- $repo := default .Values.image.repository .Values.trainer.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.trainer.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* Where the shared config file is mounted. */}}
{{- define "protege.configPath" -}}/etc/protege/protege.yaml{{- end -}}

{{/* The student's OpenAI route: LoRAX when this chart deploys it, else student.baseUrl. */}}
{{- define "protege.studentBaseUrl" -}}
{{- if .Values.lorax.enabled -}}
{{- printf "http://%s:%d/v1" (include "protege.componentName" (dict "ctx" . "component" "lorax")) (int .Values.lorax.service.port) -}}
{{- else -}}
{{- .Values.student.baseUrl -}}
{{- end -}}
{{- end -}}

{{/* The bucket LoRAX loads adapters from: lorax.adapterBucket, else the store's. */}}
{{- define "protege.adapterBucket" -}}
{{- if .Values.lorax.adapterBucket -}}
{{- .Values.lorax.adapterBucket -}}
{{- else if hasPrefix "s3://" .Values.store.uri -}}
{{- regexReplaceAll "^s3://([^/]+).*$" .Values.store.uri "${1}" -}}
{{- else -}}
{{- fail "lorax.enabled needs an s3:// store.uri or lorax.adapterBucket: LoRAX loads adapters from S3" -}}
{{- end -}}
{{- end -}}

{{/*
protege.yaml: the user's config with the keys the chart owns set from values. Secrets are not
in it; they reach the containers as environment variables.
*/}}
{{- define "protege.config" -}}
{{- $c := deepCopy (.Values.config | default dict) -}}
{{- $_ := set $c "store" .Values.store.uri -}}
{{- $_ = set $c "server" (dict "host" "0.0.0.0" "port" (int .Values.gateway.port) "workers" (int .Values.gateway.workers)) -}}
{{- $_ = set $c "teacher" (mergeOverwrite (get $c "teacher" | default dict) (dict "base_url" .Values.teacher.baseUrl)) -}}
{{- $student := include "protege.studentBaseUrl" . -}}
{{- if $student -}}
{{- $_ = set $c "student" (mergeOverwrite (get $c "student" | default dict) (dict "base_url" $student)) -}}
{{- end -}}
{{- if .Values.lorax.enabled -}}
{{- /* LoRAX loads each adapter from where the trainer published it: <store>/adapters/<task>/<version> */ -}}
{{- $_ = set (get $c "student") "adapter_prefix" (printf "%s/adapters/" (trimSuffix "/" .Values.store.uri)) -}}
{{- end -}}
{{- $_ = set $c "spool" (mergeOverwrite (get $c "spool" | default dict) (dict "dir" .Values.gateway.spool.mountPath)) -}}
{{- $sidecar := dict "metrics_host" "0.0.0.0" "metrics_port" (int .Values.sidecar.metricsPort) "shutdown_wait_s" (int .Values.sidecar.shutdownWaitSeconds) -}}
{{- $_ = set $c "sidecar" (mergeOverwrite (get $c "sidecar" | default dict) $sidecar) -}}
{{- if .Values.autopilot.enabled -}}
{{- $_ = set $c "autopilot" (include "protege.autopilotSettings" . | fromYaml) -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/*
protege.yaml's autopilot section: autopilot.settings, plus how it launches runs (a Job from the
template the chart renders, in the namespace of PROTEGE_NAMESPACE), where it serves its metrics
and the gateway whose admin API it calls. A task's base_model defaults to trainer.baseModel: the
autopilot passes it to every run, after the Job template's own --base-model.
*/}}
{{- define "protege.autopilotSettings" -}}
{{- $a := deepCopy (default dict .Values.autopilot.settings) -}}
{{- $tasks := dict -}}
{{- range $task, $rules := (default dict $a.tasks) -}}
{{- $_ := set $tasks $task (merge (default dict $rules) (dict "base_model" $.Values.trainer.baseModel)) -}}
{{- end -}}
{{- $_ := set $a "tasks" $tasks -}}
{{- $gateway := include "protege.componentName" (dict "ctx" . "component" "gateway") -}}
{{- $_ = set $a "runner" "kubernetes" -}}
{{- $kube := mergeOverwrite (default dict (get $a "kubernetes")) (dict "job_template" (include "protege.autopilotJobPath" .)) -}}
{{- $_ = set $a "kubernetes" $kube -}}
{{- $_ = set $a "metrics_host" "0.0.0.0" -}}
{{- $_ = set $a "metrics_port" (int .Values.autopilot.metricsPort) -}}
{{- $_ = set $a "gateway_url" (printf "http://%s:%d" $gateway (int .Values.gateway.service.port)) -}}
{{- toYaml $a -}}
{{- end -}}

{{/*
A container's environment as YAML: variables read from keys of existing Secrets (those named),
the store's AWS settings when asked, then the extra ones:
(dict "ctx" $ "secrets" (list (list "PROTEGE_TEACHER_API_KEY" .Values.teacher.apiKey)) "store" true "extra" list).
*/}}
{{- define "protege.env" -}}
{{- $env := list -}}
{{- range .secrets -}}
{{- $ref := index . 1 -}}
{{- if $ref.secretName -}}
{{- $env = append $env (dict "name" (index . 0) "valueFrom" (dict "secretKeyRef" (dict "name" $ref.secretName "key" $ref.secretKey))) -}}
{{- end -}}
{{- end -}}
{{- if .store -}}
{{- $s3 := .ctx.Values.store.s3 -}}
{{- with $s3.endpoint -}}
{{- $env = append $env (dict "name" "AWS_ENDPOINT_URL" "value" .) -}}
{{- end -}}
{{- with $s3.region -}}
{{- $env = append $env (dict "name" "AWS_DEFAULT_REGION" "value" .) -}}
{{- end -}}
{{- if $s3.credentialsSecret -}}
{{- $env = append $env (dict "name" "AWS_ACCESS_KEY_ID" "valueFrom" (dict "secretKeyRef" (dict "name" $s3.credentialsSecret "key" $s3.accessKeyIdKey))) -}}
{{- $env = append $env (dict "name" "AWS_SECRET_ACCESS_KEY" "valueFrom" (dict "secretKeyRef" (dict "name" $s3.credentialsSecret "key" $s3.secretAccessKeyKey))) -}}
{{- end -}}
{{- end -}}
{{- toYaml (concat $env (default list .extra)) -}}
{{- end -}}

{{/* Checks across values that the schema cannot express. */}}
{{- define "protege.validate" -}}
{{- $g := .Values.gateway -}}
{{- $need := add $g.preStopSleepSeconds .Values.sidecar.shutdownWaitSeconds 30 -}}
{{- if lt (int $g.terminationGracePeriodSeconds) (int $need) -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must leave the sidecar time to ship the last segment: at least preStopSleepSeconds + sidecar.shutdownWaitSeconds + 30 = %d" (int $g.terminationGracePeriodSeconds) (int $need)) -}}
{{- end -}}
{{- if and .Values.lorax.enabled .Values.student.baseUrl -}}
{{- fail "student.baseUrl and lorax.enabled are exclusive: with LoRAX deployed, the gateway's student is LoRAX" -}}
{{- end -}}
{{- if and $g.autoscaling.enabled (gt (int $g.autoscaling.minReplicas) (int $g.autoscaling.maxReplicas)) -}}
{{- fail "gateway.autoscaling.minReplicas must not exceed maxReplicas" -}}
{{- end -}}
{{- $tr := .Values.trainer -}}
{{- if and (ge (int $tr.gpus) 1) (gt (int $tr.nproc) 1) -}}
{{- fail (printf "trainer.nproc (%d) and trainer.gpus (%d) are exclusive: with GPUs the trainer runs one process per GPU, so leave trainer.nproc at 1 (it is for CPU runs)" (int $tr.nproc) (int $tr.gpus)) -}}
{{- end -}}
{{- $ap := .Values.autopilot -}}
{{- if $ap.enabled -}}
{{- if not $g.adminToken.secretName -}}
{{- fail "autopilot.enabled needs gateway.adminToken.secretName: the autopilot starts and ends challenges through the gateway's admin API, with the gateway's token (PROTEGE_ADMIN_TOKEN)" -}}
{{- end -}}
{{- if $tr.enabled -}}
{{- range $tr.tasks -}}
{{- if hasKey (default dict $ap.settings.tasks) .name -}}
{{- fail (printf "task %q is trained both by a trainer CronJob (trainer.tasks) and by the autopilot (autopilot.settings.tasks): leave it to one of them" .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The Job the autopilot launches for one run: the trainer's pod as the CronJobs run it, with no
task. Per run the autopilot sets metadata.name, adds the protege/task and protege/run labels and
appends `--task <task> --run-id <run> [--champion <version>]` to the container's args.
*/}}
{{- define "protege.autopilotJob" -}}
{{- $t := .Values.trainer -}}
{{- $labels := include "protege.trainerLabels" (dict "ctx" . "task" "") -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "protege.componentName" (dict "ctx" . "component" "autopilot-run") }}
  labels:
    {{- $labels | nindent 4 }}
spec:
  # One attempt per run: a failed run is the autopilot's to retry, on its own schedule.
  backoffLimit: 0
  activeDeadlineSeconds: {{ $t.activeDeadlineSeconds }}
  ttlSecondsAfterFinished: {{ $t.ttlSecondsAfterFinished }}
  template:
    metadata:
      labels:
        {{- $labels | nindent 8 }}
    spec:
      {{- include "protege.trainerPodSpec" (dict "ctx" . "task" "" "args" list) | nindent 6 }}
{{- end -}}

{{/*
The trainer container's resources as YAML. trainer.resources, except where the chart picks the
device: with gpus >= 1, gpus of gpuResource requested and limited; with nproc > 1 on CPU, no
gpuResource at all.
*/}}
{{- define "protege.trainerResources" -}}
{{- $t := .Values.trainer -}}
{{- $r := deepCopy (default dict $t.resources) -}}
{{- $gpus := int $t.gpus -}}
{{- $cpu := and (eq $gpus 0) (gt (int $t.nproc) 1) -}}
{{- if or (ge $gpus 1) $cpu -}}
{{- range $kind := list "requests" "limits" -}}
{{- $amounts := default dict (get $r $kind) -}}
{{- if $cpu -}}
{{- $_ := unset $amounts $t.gpuResource -}}
{{- else -}}
{{- $_ := set $amounts $t.gpuResource $gpus -}}
{{- end -}}
{{- if $amounts -}}
{{- $_ := set $r $kind $amounts -}}
{{- else -}}
{{- $_ := unset $r $kind -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $r -}}
{{- toYaml $r -}}
{{- end -}}
{{- end -}}

{{/*
The trainer's pod spec, shared by the CronJobs and the one-off Job:
(dict "ctx" $ "task" "tickets" "args" (list ...)).
*/}}
{{- define "protege.trainerPodSpec" -}}
{{- $v := .ctx.Values -}}
{{- $t := $v.trainer -}}
{{- $gpu := ge (int $t.gpus) 1 -}}
restartPolicy: Never
serviceAccountName: {{ include "protege.serviceAccountName" .ctx }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $t.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: trainer
    image: {{ include "protege.trainerImage" .ctx }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    workingDir: /work
    command: [protege]
    args:
      - train
      {{- /* No task: the autopilot's Job template, to which the autopilot appends --task. */}}
      {{- with .task }}
      - --task
      - {{ . | quote }}
      {{- end }}
      - --config
      - {{ include "protege.configPath" .ctx }}
      - --base-model
      - {{ $t.baseModel | quote }}
      {{- /* Data-parallel runs: torchrun launches one process per GPU (NCCL), or nproc on CPU (gloo). */}}
      {{- if $gpu }}
      - --nproc
      - {{ int $t.gpus | quote }}
      - --device
      - cuda
      {{- else if gt (int $t.nproc) 1 }}
      - --nproc
      - {{ int $t.nproc | quote }}
      - --device
      - cpu
      {{- end }}
      {{- range (concat $t.extraArgs .args) }}
      - {{ . | quote }}
      {{- end }}
    env:
      {{- $base := list (dict "name" "HOME" "value" "/work") (dict "name" "HF_HUB_OFFLINE" "value" "1") }}
      {{- include "protege.env" (dict "ctx" .ctx "store" true "extra" (concat $base $t.extraEnv)) | nindent 6 }}
    {{- with include "protege.trainerResources" .ctx }}
    resources:
      {{- . | nindent 6 }}
    {{- end }}
    {{- with $t.securityContext }}
    securityContext:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - name: config
        mountPath: /etc/protege
        readOnly: true
      - name: work
        mountPath: /work
      - name: tmp
        mountPath: /tmp
      {{- if $t.modelVolume }}
      - name: models
        mountPath: /models
        readOnly: true
      {{- end }}
      {{- if $gpu }}
      - name: shm
        mountPath: /dev/shm
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "protege.configName" .ctx }}
  - name: work
    emptyDir:
      sizeLimit: {{ $t.workSizeLimit }}
  - name: tmp
    emptyDir:
      sizeLimit: {{ $t.tmpSizeLimit }}
  {{- with $t.modelVolume }}
  - name: models
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $gpu }}
  {{- /* NCCL and the data loader's workers outgrow a container's 64 MiB of shared memory. */}}
  - name: shm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $t.shmSize }}
  {{- end }}
{{- with $t.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $t.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $t.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
