#!/usr/bin/env bash
# End-to-end check of the fake kubelet against a fresh testbed cluster.
#
# It starts the cluster (tests/testbed/cluster.sh up, in $PKR_CLUSTER_DIR, default
# /tmp/pkr-kubelet-cluster) and the fake kubelet, then checks with kubectl:
#   1. a Job running `sh -c 'echo hello; exit 0'` completes and `kubectl logs` shows hello;
#   2. a Job exiting 3 with backoffLimit 2 ends Failed/BackoffLimitExceeded after 3 pods;
#   3. a scripted pod writing 100 lines at 50/s is followed with `kubectl logs -f`: all lines,
#      in order;
#   4. an ImagePullBackOff pod stays Pending with the kubelet's events;
#   5. deleting a running exec pod (`sleep`) kills the process and the pod disappears;
#   6. scripted behaviours (OOM, eviction, unschedulable, node loss, restarts with previous
#      logs, invalid image, config error, activeDeadlineSeconds) show the kubelet's status and
#      events;
#   7. $SMOKE_PODS (300) scripted pods created at once all succeed; it reports the time and
#      the fake kubelet's CPU time and RSS.
# Then it stops everything it started (also on failure or Ctrl-C).
#
# Environment: PKR_CLUSTER_DIR, SMOKE_PODS (300), SMOKE_RUN_SECONDS (2: run time of each bulk
# pod), FAKE_KUBELET_BIN (skip the cargo build and use this binary), KUBECTL (kubectl).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
export PKR_CLUSTER_DIR="${PKR_CLUSTER_DIR:-/tmp/pkr-kubelet-cluster}"
KUBECTL="${KUBECTL:-kubectl}"
N="${SMOKE_PODS:-300}"
RUN_SECONDS="${SMOKE_RUN_SECONDS:-2}"
CLUSTER="$ROOT/tests/testbed/cluster.sh"
STATE="$PKR_CLUSTER_DIR/fake-kubelet"

log() { printf '[%(%H:%M:%S)T] smoke: %s\n' -1 "$*" >&2; }
FAILED=0
RESULTS=()
pass() { RESULTS+=("PASS  $*"); log "PASS $*"; }
fail() { RESULTS+=("FAIL  $*"); log "FAIL $*"; FAILED=1; }

KPID=""
cleanup() {
    local rc=$?
    if [[ -n "$KPID" ]] && kill -0 "$KPID" 2>/dev/null; then
        kill -TERM "$KPID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$KPID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$KPID" 2>/dev/null || true
        wait "$KPID" 2>/dev/null || true
    fi
    "$CLUSTER" down >/dev/null 2>&1 || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "${FAKE_KUBELET_BIN:-}" ]]; then
    log "building pkr-fake-kubelet"
    (cd "$ROOT" && cargo build -q -p pkr-fake-kubelet) || { log "build failed"; exit 1; }
    FAKE_KUBELET_BIN="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug/fake-kubelet"
fi

if "$CLUSTER" status >/dev/null 2>&1; then
    log "a cluster is up in $PKR_CLUSTER_DIR; restarting it fresh"
    "$CLUSTER" down >/dev/null 2>&1
fi
"$CLUSTER" up >&2 || { log "cluster.sh up failed"; exit 1; }
export KUBECONFIG="$PKR_CLUSTER_DIR/kubeconfig"
k() { "$KUBECTL" "$@"; }

mkdir -p "$STATE"
"$FAKE_KUBELET_BIN" --kubeconfig "$KUBECONFIG" --state-dir "$STATE" \
    >"$STATE/stdout" 2>"$STATE/stderr" &
KPID=$!
for _ in $(seq 300); do
    grep -q '^fake-kubelet ready' "$STATE/stdout" 2>/dev/null && break
    kill -0 "$KPID" 2>/dev/null || { log "fake-kubelet exited:"; tail -20 "$STATE/stderr" >&2; exit 1; }
    sleep 0.1
done
grep '^fake-kubelet ready' "$STATE/stdout" >&2 || { log "fake-kubelet not ready after 30s"; exit 1; }
k wait --for=condition=Ready node/fake-node --timeout=10s >/dev/null || fail "node Ready"

# ---- 1. a Job that succeeds, and its logs
k apply -f - >/dev/null <<'EOF'
apiVersion: batch/v1
kind: Job
metadata: {name: hello}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: busybox:1.36, command: ["sh", "-c", "echo hello; exit 0"]}
EOF
if k wait --for=condition=complete job/hello --timeout=60s >/dev/null; then
    out="$(k logs job/hello)"
    [[ "$out" == "hello" ]] && pass "job hello completes; kubectl logs = hello" \
        || fail "job hello logs: '$out'"
else
    fail "job hello did not complete"
fi

# ---- 2. a Job that fails 3 times
k apply -f - >/dev/null <<'EOF'
apiVersion: batch/v1
kind: Job
metadata: {name: exit3}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: busybox:1.36, command: ["sh", "-c", "exit 3"]}
EOF

# ---- 3. follow a scripted pod's 100 lines at 50 lines/s
k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: follow
  annotations: {testbed.prefect.io/log-lines: "100", testbed.prefect.io/log-rate: "50"}
spec:
  restartPolicy: Never
  containers: [{name: main, image: busybox:1.36}]
EOF
for _ in $(seq 100); do
    [[ "$(k get pod follow -o jsonpath='{.status.containerStatuses[0].state.running}' 2>/dev/null)" != "" ]] && break
    sleep 0.05
done
t0=$(date +%s.%N)
k logs -f follow >"$STATE/follow.txt" 2>&1
t1=$(date +%s.%N)
if diff <(seq 1 100 | sed 's/^/line /') "$STATE/follow.txt" >/dev/null; then
    pass "logs -f: 100/100 lines in order, stream ended $(printf '%.1f' "$(echo "$t1 - $t0" | bc)")s after it started"
else
    fail "logs -f got $(wc -l <"$STATE/follow.txt") lines (see $STATE/follow.txt)"
fi

# ---- 4. ImagePullBackOff
k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: pull
  annotations: {testbed.prefect.io/image-pull: ImagePullBackOff}
spec:
  restartPolicy: Never
  containers: [{name: main, image: registry.invalid/nope:1}]
EOF
sleep 3
phase="$(k get pod pull -o jsonpath='{.status.phase}')"
reason="$(k get pod pull -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}')"
events="$(k get events --field-selector involvedObject.name=pull -o json |
    jq -r '.items[] | "\(.type)/\(.reason)/\(.message)"')"
if [[ "$phase" == Pending && "$reason" == ImagePullBackOff ]] &&
    grep -q '^Normal/Pulling/Pulling image "registry.invalid/nope:1"' <<<"$events" &&
    grep -q '^Warning/Failed/Failed to pull image "registry.invalid/nope:1"' <<<"$events" &&
    grep -q '^Warning/Failed/Error: ErrImagePull' <<<"$events" &&
    grep -q '^Normal/BackOff/Back-off pulling image "registry.invalid/nope:1"' <<<"$events" &&
    grep -q '^Warning/Failed/Error: ImagePullBackOff' <<<"$events"; then
    pass "ImagePullBackOff: Pending, waiting reason and Pulling/Failed/BackOff events"
else
    fail "ImagePullBackOff: phase=$phase reason=$reason events: $events"
fi

# ---- 5. delete a running exec pod
k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 10
  containers:
  - {name: main, image: busybox:1.36, command: ["sh", "-c", "setsid sleep 1000.25 & sleep 1000.5"]}
EOF
k wait --for=condition=Ready pod/sleeper --timeout=30s >/dev/null || fail "sleeper not Ready"
sleep 0.3
before="$(pgrep -fc '^sleep 1000\.(25|5)$' || true)"
t0=$(date +%s.%N)
k delete pod sleeper --wait=true --timeout=30s >/dev/null
t1=$(date +%s.%N)
sleep 0.2
after="$(pgrep -fc '^sleep 1000\.(25|5)$' || true)"
if [[ "$before" == 2 && "$after" == 0 ]] && ! k get pod sleeper >/dev/null 2>&1; then
    pass "delete running exec pod: 2 sleep processes before, 0 after, pod gone in $(printf '%.2f' "$(echo "$t1 - $t0" | bc)")s"
else
    fail "delete exec pod: sleep processes before=$before after=$after"
fi

# ---- 2 (result)
if k wait --for=condition=failed job/exit3 --timeout=180s >/dev/null; then
    jr="$(k get job exit3 -o json | jq -r '[.status.failed, (.status.conditions[] | select(.type=="Failed") | .reason)] | @tsv')"
    pods="$(k get pods -l job-name=exit3 -o json | jq '[.items[] | select(.status.containerStatuses[0].state.terminated.exitCode == 3)] | length')"
    if [[ "$jr" == $'3\tBackoffLimitExceeded' && "$pods" == 3 ]]; then
        pass "job exit3: Failed/BackoffLimitExceeded after 3 pods with exitCode 3"
    else
        fail "job exit3: failed/reason=$jr pods with exit 3=$pods"
    fi
else
    fail "job exit3 did not fail"
fi

# ---- 6. scripted behaviours: status and events as a kubelet writes them
k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: s-oom, annotations: {testbed.prefect.io/oom: "true"}}
spec: {restartPolicy: Never, containers: [{name: main, image: busybox:1.36}]}
---
apiVersion: v1
kind: Pod
metadata: {name: s-evict, annotations: {testbed.prefect.io/evict-after-seconds: "1", testbed.prefect.io/run-seconds: "60"}}
spec: {restartPolicy: Never, containers: [{name: main, image: busybox:1.36}]}
---
apiVersion: v1
kind: Pod
metadata: {name: s-unsched}
spec: {restartPolicy: Never, nodeSelector: {testbed.prefect.io/pool: none}, containers: [{name: main, image: busybox:1.36}]}
---
apiVersion: v1
kind: Pod
metadata: {name: s-lost, annotations: {testbed.prefect.io/node-lost-after-seconds: "1", testbed.prefect.io/run-seconds: "60"}}
spec: {restartPolicy: Never, containers: [{name: main, image: busybox:1.36}]}
---
apiVersion: v1
kind: Pod
metadata: {name: s-restarts, annotations: {testbed.prefect.io/restart-count: "1", testbed.prefect.io/log-lines: "2", testbed.prefect.io/exit-code: "4"}}
spec: {restartPolicy: Never, containers: [{name: main, image: busybox:1.36}]}
---
apiVersion: v1
kind: Pod
metadata: {name: s-badimage, annotations: {testbed.prefect.io/invalid-image: "true"}}
spec: {restartPolicy: Never, containers: [{name: main, image: busybox:1.36}]}
---
apiVersion: v1
kind: Pod
metadata: {name: s-config, annotations: {testbed.prefect.io/create-container-config-error: "true"}}
spec: {restartPolicy: Never, containers: [{name: main, image: busybox:1.36}]}
---
apiVersion: v1
kind: Pod
metadata: {name: s-deadline, annotations: {testbed.prefect.io/run-seconds: "60"}}
spec: {restartPolicy: Never, activeDeadlineSeconds: 1, containers: [{name: main, image: busybox:1.36}]}
EOF
sleep 4
st() { k get pod "$1" -o json | jq -c "$2"; }
ev() {
    k get events --field-selector "involvedObject.name=$1" -o json |
        jq -r '.items[] | "\(.type)/\(.reason)/\(.source.component)"' | sort -u | tr '\n' ' '
}
expect() { # description, actual, expected
    if [[ "$2" == "$3" ]]; then pass "$1"; else fail "$1: got '$2', want '$3'"; fi
}
expect "oom: Failed, terminated 137 OOMKilled" \
    "$(st s-oom '[.status.phase, .status.containerStatuses[0].state.terminated.exitCode, .status.containerStatuses[0].state.terminated.reason]')" \
    '["Failed",137,"OOMKilled"]'
expect "evict: Failed/Evicted, no container statuses, Evicted + Killing events" \
    "$(st s-evict '[.status.phase, .status.reason, (.status.containerStatuses // [] | length), (.status.message | startswith("The node was low on resource: memory."))]') $(ev s-evict | grep -o 'Warning/Evicted/kubelet\|Normal/Killing/kubelet' | sort | tr '\n' ' ')" \
    '["Failed","Evicted",0,true] Normal/Killing/kubelet Warning/Evicted/kubelet '
expect "unschedulable: not bound, PodScheduled=False/Unschedulable from the scheduler, NotTriggerScaleUp" \
    "$(st s-unsched '[.spec.nodeName, (.status.conditions[0] | .type, .status, .reason)]') $(ev s-unsched)" \
    '[null,"PodScheduled","False","Unschedulable"] Normal/NotTriggerScaleUp/cluster-autoscaler Warning/FailedScheduling/default-scheduler '
expect "node lost: still Running, state running (no exit code), Ready=False, reason NodeLost" \
    "$(st s-lost '[.status.phase, .status.reason, (.status.containerStatuses[0].state | keys[0]), (.status.conditions[] | select(.type=="Ready") | .status)]')" \
    '["Running","NodeLost","running","False"]'
k delete pod s-lost --wait=false >/dev/null
sleep 2
expect "node lost: deletion is never confirmed (pod stays Terminating)" \
    "$(st s-lost '.metadata.deletionTimestamp != null')" 'true'
k delete pod s-lost --grace-period=0 --force >/dev/null 2>&1
expect "restart-count: restartCount 1, lastState exit 1, final exit 4, previous logs" \
    "$(st s-restarts '[.status.phase, .status.containerStatuses[0].restartCount, .status.containerStatuses[0].lastState.terminated.exitCode, .status.containerStatuses[0].state.terminated.exitCode]') $(k logs s-restarts --previous | tr '\n' ,)" \
    '["Failed",1,1,4] line 1,line 2,'
expect "invalid-image: waiting InvalidImageName, InspectFailed + Failed events" \
    "$(st s-badimage '[.status.phase, .status.containerStatuses[0].state.waiting.reason]') $(ev s-badimage)" \
    '["Pending","InvalidImageName"] Normal/Scheduled/default-scheduler Warning/Failed/kubelet Warning/InspectFailed/kubelet '
expect "config error: waiting CreateContainerConfigError, kubectl logs answers 400" \
    "$(st s-config '[.status.phase, .status.containerStatuses[0].state.waiting.reason]') $(k logs s-config 2>&1 | grep -c 'is waiting to start: CreateContainerConfigError')" \
    '["Pending","CreateContainerConfigError"] 1'
expect "activeDeadlineSeconds: Failed/DeadlineExceeded, container terminated 143" \
    "$(st s-deadline '[.status.phase, .status.reason, .status.containerStatuses[0].state.terminated.exitCode]')" \
    '["Failed","DeadlineExceeded",143]'

# ---- 7. N scripted pods at once
ticks=$(getconf CLK_TCK)
cpu() { awk -v t="$ticks" '{printf "%.2f", ($14 + $15) / t}' "/proc/$KPID/stat"; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$KPID/status"; }
{
    for i in $(seq 1 "$N"); do
        cat <<EOF
---
apiVersion: v1
kind: Pod
metadata:
  name: bulk-$i
  labels: {smoke: bulk}
  annotations: {testbed.prefect.io/run-seconds: "$RUN_SECONDS", testbed.prefect.io/log-lines: "10"}
spec:
  restartPolicy: Never
  containers: [{name: main, image: busybox:1.36}]
EOF
    done
} >"$STATE/bulk.yaml"
cpu0=$(cpu); rss0=$(rss)
t0=$(date +%s.%N)
k create -f "$STATE/bulk.yaml" >/dev/null
t_created=$(date +%s.%N)
done_count=0
deadline=$(( $(date +%s) + 600 ))
while (( $(date +%s) < deadline )); do
    done_count="$(k get pods -l smoke=bulk -o json | jq '[.items[] | select(.status.phase=="Succeeded")] | length')"
    (( done_count >= N )) && break
    sleep 1
done
t1=$(date +%s.%N)
cpu1=$(cpu); rss1=$(rss); hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$KPID/status")
total=$(echo "$t1 - $t0" | bc); create=$(echo "$t_created - $t0" | bc)
lines="$(k logs bulk-$N | wc -l)"
msg="$N scripted pods (run ${RUN_SECONDS}s, 10 log lines): all Succeeded ${total%.*}s after the first create (kubectl create took ${create%.*}s); fake-kubelet CPU $(echo "$cpu1 - $cpu0" | bc)s, RSS ${rss0}->${rss1} KiB (peak ${hwm} KiB)"
if (( done_count >= N )) && [[ "$lines" == 10 ]]; then pass "$msg"; else fail "$msg; succeeded=$done_count lines=$lines"; fi
t0=$(date +%s.%N)
# (kubectl's own --wait paces itself at ~6 objects/s, so poll instead)
k delete pods -l smoke=bulk --wait=false >/dev/null
for _ in $(seq 600); do
    left="$(k get pods -l smoke=bulk -o name | wc -l)"
    (( left == 0 )) && break
    sleep 0.5
done
t1=$(date +%s.%N)
[[ "$left" == 0 ]] && pass "deleted $N finished pods in $(printf '%.1f' "$(echo "$t1 - $t0" | bc)")s" \
    || fail "$left bulk pods left after delete"

log "fake-kubelet: $(grep -c ' WARN ' "$STATE/stderr" || true) warnings, $(grep -c ' ERROR ' "$STATE/stderr" || true) errors in $STATE/stderr"
printf '%s\n' "${RESULTS[@]}"
exit "$FAILED"
