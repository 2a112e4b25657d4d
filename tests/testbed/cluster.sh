#!/usr/bin/env bash
# Start, stop and inspect a local Kubernetes v1.20 control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) bound to 127.0.0.1 on free ports. No kubelet: the
# project's fake kubelet plays the node (and a node autoscaler); the real scheduler binds pods.
#
#   cluster.sh up       build (cached) the binaries, start a fresh stack, write kubeconfigs;
#                       with PKR_WITH_NODE=1 also the fake kubelet (what `make cluster-up` does)
#   cluster.sh down     stop exactly the processes `up` started (SIGTERM, then SIGKILL)
#   cluster.sh status   print whether the stack is up; exit 0 if up, 1 if not
#   cluster.sh restart-apiserver
#                       restart kube-apiserver alone (same port and flags; etcd keeps the data)
#
# Environment:
#   PKR_CLUSTER_DIR     state dir (default: <repo>/.cluster): kubeconfig, kubeconfig-narrow,
#                       cluster.env, pids, logs/, pki/, etcd data
#   PKR_CACHE           binary cache root, as for build-control-plane.sh
#   PKR_BIN_DIR         use kube-apiserver/kube-controller-manager/kube-scheduler from this dir
#   PKR_SKIP_BUILD=1    do not call build-control-plane.sh (fail if the binaries are missing)
#   PKR_UP_TIMEOUT      seconds to wait for readiness (default: 90)
#   PKR_WITH_NODE=1     `up` also starts the fake kubelet (the test harness starts its own)
#   PKR_FAKE_KUBELET    the fake kubelet's binary (default: <repo>/target/release/fake-kubelet)
set -euo pipefail

readonly K8S_VERSION="v1.20.2"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
STATE_DIR="${PKR_CLUSTER_DIR:-$REPO_ROOT/.cluster}"
CACHE_ROOT="${PKR_CACHE:-$HOME/.cache/prefect-kubernetes-rs}"
BIN_DIR="${PKR_BIN_DIR:-$CACHE_ROOT/k8s-$K8S_VERSION/bin}"
UP_TIMEOUT="${PKR_UP_TIMEOUT:-90}"
FAKE_KUBELET="${PKR_FAKE_KUBELET:-$REPO_ROOT/target/release/fake-kubelet}"

PIDS_FILE="$STATE_DIR/pids"
LOG_DIR="$STATE_DIR/logs"
PKI_DIR="$STATE_DIR/pki"
ENV_FILE="$STATE_DIR/cluster.env"
KUBECONFIG_ADMIN="$STATE_DIR/kubeconfig"
KUBECONFIG_NARROW="$STATE_DIR/kubeconfig-narrow"
KUBECONFIG_KCM="$STATE_DIR/kubeconfig-controller-manager"
KUBECONFIG_SCHEDULER="$STATE_DIR/kubeconfig-scheduler"
NARROW_USER="pkr-narrow"
FEATURE_GATES="TTLAfterFinished=true"
SERVICE_CIDR="10.96.0.0/16"
SERVICE_IP="10.96.0.1"   # first IP of SERVICE_CIDR: the `kubernetes` Service

# A log line that cannot be written (its reader gone, e.g. `... | tee` after Ctrl-C) is dropped:
# stopping the stack must not depend on anyone reading what it says.
log() { printf '[%s] cluster: %s\n' "$(date '+%H:%M:%S')" "$*" 2>/dev/null || true; }
die() {
    printf '[%s] cluster: ERROR: %s\n' "$(date '+%H:%M:%S')" "$*" >&2
    exit 1
}

# --- processes ---------------------------------------------------------------------------------

# A pid from the pids file counts only while it still runs the binary we started (the kernel
# may have reused the number for something else since).
pid_matches() {
    local pid="$1" exe="$2"
    [[ -e "/proc/$pid" ]] || return 1
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" == "$exe" ]]
}

# Print "<name> <pid> <exe>" for each recorded process that is still ours and alive.
live_processes() {
    [[ -f "$PIDS_FILE" ]] || return 0
    local name pid exe
    while read -r name pid exe; do
        [[ -n "${exe:-}" ]] || continue
        if pid_matches "$pid" "$exe"; then
            printf '%s %s %s\n' "$name" "$pid" "$exe"
        fi
    done <"$PIDS_FILE"
}

# start <name> <binary> <args...>: run detached (own session, stdin closed), log to logs/<name>.log
start() {
    local name="$1" bin="$2"
    shift 2
    local exe
    exe="$(readlink -f "$bin")"
    # The child records itself in the pids file before exec'ing (so the recorded pid is the
    # binary itself), not this script after the fact: an `up` interrupted at any point leaves
    # no process that `down` does not know of.
    # shellcheck disable=SC2016  # $$, $0 and $1 belong to the inner shell
    setsid bash -c 'printf "%s %s %s\n" "$1" "$$" "$2" >>"$0"; shift; exec "$@"' \
        "$PIDS_FILE" "$name" "$exe" "$@" </dev/null >"$LOG_DIR/$name.log" 2>&1 &
    # Until it is in the pids file, an interrupted `up` stops it by this pid (stop_unless_up).
    STARTING_PID=$!
    local i pid=""
    for ((i = 0; i < 50; i++)); do
        pid="$(awk -v n="$name" '$1 == n { p = $2 } END { print p }' "$PIDS_FILE" 2>/dev/null || true)"
        [[ -n "$pid" ]] && break
        sleep 0.1
    done
    [[ -n "$pid" ]] || die "$name did not start (log: $LOG_DIR/$name.log)"
    STARTING_PID=""
    log "started $name (pid $pid, log $LOG_DIR/$name.log)"
}

# Stop every recorded process, newest first: SIGTERM, then SIGKILL after a grace period.
stop_all() {
    local grace="${1:-5}"
    [[ -f "$PIDS_FILE" ]] || return 0
    local lines=() line name pid exe
    mapfile -t lines < <(tac "$PIDS_FILE")
    for line in "${lines[@]}"; do
        read -r name pid exe <<<"$line"
        [[ -n "${exe:-}" ]] || continue
        pid_matches "$pid" "$exe" || continue
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + grace))
        while pid_matches "$pid" "$exe" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if pid_matches "$pid" "$exe"; then
            log "$name (pid $pid) ignored SIGTERM for ${grace}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while pid_matches "$pid" "$exe"; do sleep 0.1; done
        fi
    done
    rm -f "$PIDS_FILE"
}

# Print the tail of a component's log and fail.
fail_with_log() {
    local name="$1" msg="$2"
    {
        printf '%s\n' "----- last 25 lines of $LOG_DIR/$name.log -----"
        tail -n 25 "$LOG_DIR/$name.log" 2>/dev/null || true
        printf '%s\n' "-----"
    } >&2
    stop_all 3 >&2
    die "$msg"
}

is_alive() {
    local name="$1" n
    while read -r n _; do
        [[ "$n" == "$name" ]] && return 0
    done < <(live_processes)
    return 1
}

# --- setup helpers -----------------------------------------------------------------------------

free_ports() {
    # Bind all at once so the ports are distinct; the kernel picks unused ones.
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

gen_pki() {
    mkdir -p "$PKI_DIR"
    local cnf="$PKI_DIR/openssl.cnf"
    cat >"$cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, IP:$SERVICE_IP, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
EOF
    (
        cd "$PKI_DIR"
        umask 077
        openssl genrsa -out ca.key 2048
        openssl req -x509 -new -key ca.key -sha256 -days 3650 -config "$cnf" -extensions ca \
            -subj "/CN=prefect-kubernetes-rs testbed CA" -out ca.crt
        openssl genrsa -out apiserver.key 2048
        openssl req -new -key apiserver.key -config "$cnf" -subj "/CN=kube-apiserver" -out apiserver.csr
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
            -days 3650 -extfile "$cnf" -extensions server -out apiserver.crt
        # Service account token signing key pair.
        openssl genrsa -out sa.key 2048
        openssl rsa -in sa.key -pubout -out sa.pub
        chmod 0644 ca.crt apiserver.crt sa.pub
    ) >"$LOG_DIR/pki.log" 2>&1 || { cat "$LOG_DIR/pki.log" >&2; die "certificate generation failed"; }
}

write_kubeconfig() {
    local path="$1" user="$2" token="$3" server="$4" ca_data
    ca_data="$(base64 -w0 <"$PKI_DIR/ca.crt")"
    (
        umask 077
        cat >"$path" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: pkr-testbed
  cluster:
    server: $server
    certificate-authority-data: $ca_data
users:
- name: $user
  user:
    token: $token
contexts:
- name: pkr-testbed
  context:
    cluster: pkr-testbed
    user: $user
    namespace: default
current-context: pkr-testbed
EOF
    )
}

# api <method> <path> [json-body]: call the apiserver as admin, print the body, fail on HTTP >= 400
api() {
    local method="$1" path="$2" body="${3:-}"
    local args=(-sS --max-time 10 --cacert "$PKI_DIR/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN"
        -X "$method" -w '\n%{http_code}')
    [[ -n "$body" ]] && args+=(-H "Content-Type: application/json" --data-binary "$body")
    local out code
    out="$(curl "${args[@]}" "$SERVER$path")" || return 1
    code="${out##*$'\n'}"
    printf '%s\n' "${out%$'\n'*}"
    ((code < 400))
}

# Role + RoleBinding for the narrow user: batch jobs (all verbs), read pods and their logs, list
# and watch events; nothing cluster-scoped, no secrets.
create_narrow_rbac() {
    local answer
    answer="$(api POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/roles "$(cat <<EOF
{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role",
 "metadata":{"name":"$NARROW_USER","namespace":"default"},
 "rules":[
  {"apiGroups":["batch"],"resources":["jobs","jobs/status"],"verbs":["*"]},
  {"apiGroups":[""],"resources":["pods","pods/log"],"verbs":["get","list","watch"]},
  {"apiGroups":["","events.k8s.io"],"resources":["events"],"verbs":["list","watch"]}
 ]}
EOF
)")" || die "cannot create Role $NARROW_USER: $answer"
    answer="$(api POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings "$(cat <<EOF
{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding",
 "metadata":{"name":"$NARROW_USER","namespace":"default"},
 "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"$NARROW_USER"},
 "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"$NARROW_USER"}]}
EOF
)")" || die "cannot create RoleBinding $NARROW_USER: $answer"
}

# wait_for <name> <what> <command...>: poll until the command succeeds, the process dies or time runs out
wait_for() {
    local name="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + UP_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        is_alive "$name" || fail_with_log "$name" "$name exited while waiting for $what"
        ((SECONDS < deadline)) || fail_with_log "$name" "timed out after ${UP_TIMEOUT}s waiting for $what"
        sleep 0.2
    done
}

# Probes for wait_for (shellcheck cannot see calls through "$@").
# shellcheck disable=SC2317
etcd_healthy() { [[ "$(curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health")" == *'"health":"true"'* ]]; }
apiserver_ready() {
    [[ "$(curl -sf --max-time 2 --cacert "$PKI_DIR/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" "$SERVER/readyz")" == ok ]]
}
# shellcheck disable=SC2317
kcm_healthy() { [[ "$(curl -sfk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz")" == ok ]]; }
# shellcheck disable=SC2317
scheduler_healthy() { [[ "$(curl -sfk --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz")" == ok ]]; }
# shellcheck disable=SC2317
default_sa_exists() { api GET /api/v1/namespaces/default/serviceaccounts/default; }
# The fake kubelet says so on its log once its node is registered.
# shellcheck disable=SC2317
fake_kubelet_ready() { grep -q "fake-kubelet ready" "$LOG_DIR/fake-kubelet.log" 2>/dev/null; }
# /readyz can answer ok before the apiserver's bootstrap controller has created the system
# namespaces (it does so in its own goroutine, after the post-start hooks report ready): a Role
# posted into `default` then fails with 404 (namespaces "default" not found), and the worker's
# cluster uid (the `kube-system` namespace) is not there yet either.
# shellcheck disable=SC2317
system_namespaces_exist() {
    api GET /api/v1/namespaces/default && api GET /api/v1/namespaces/kube-system
}

# Start kube-apiserver on $API_PORT against etcd on $ETCD_PORT (also used by restart-apiserver,
# which must give it the same flags).
start_apiserver() {
    start kube-apiserver "$BIN_DIR/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 \
        --secure-port="$API_PORT" \
        --insecure-port=0 \
        --cert-dir="$PKI_DIR/apiserver-selfsigned" \
        --tls-cert-file="$PKI_DIR/apiserver.crt" \
        --tls-private-key-file="$PKI_DIR/apiserver.key" \
        --client-ca-file="$PKI_DIR/ca.crt" \
        --token-auth-file="$STATE_DIR/tokens.csv" \
        --authorization-mode=RBAC \
        --service-account-key-file="$PKI_DIR/sa.pub" \
        --service-account-signing-key-file="$PKI_DIR/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --endpoint-reconciler-type=none \
        --disable-admission-plugins=ServiceAccount \
        --kubelet-preferred-address-types=InternalIP \
        --allow-privileged=true \
        --feature-gates="$FEATURE_GATES"
}

# --- commands ----------------------------------------------------------------------------------

UP_DONE=""
STARTING_PID=""
stop_unless_up() {
    [[ -z "$UP_DONE" ]] || return 0
    trap '' PIPE INT TERM
    [[ -z "$STARTING_PID" ]] || kill -TERM "$STARTING_PID" 2>/dev/null || true
    [[ -f "$PIDS_FILE" ]] || return 0
    log "not up: stopping what was started (logs kept in $LOG_DIR)"
    stop_all 3
}

cmd_up() {
    local t0=$SECONDS
    # Interrupted (Ctrl-C, SIGTERM) or failed before the stack is up: stop what was started so
    # far rather than leave a half stack running in its own sessions.
    trap 'exit 130' INT TERM
    trap 'stop_unless_up' EXIT
    # A closed stdout (its reader gone, e.g. Ctrl-C on `... | tee`) must not kill this script
    # between starting a process and recording it: a log line then fails with EPIPE and is
    # dropped (see log()). A no-op handler rather than ignoring the signal, so the processes it
    # starts get the default SIGPIPE back. (Seen: `up` killed by SIGPIPE, status -13, when its
    # reader closed the pipe right as kube-apiserver was logged as started.)
    trap ':' PIPE
    if [[ -n "$(live_processes)" ]]; then
        if cmd_status >/dev/null 2>&1; then
            UP_DONE=1 # not ours to stop
            log "already up"
            cmd_status
            return 0
        fi
        log "a previous stack is half up: stopping it first"
        stop_all
    fi

    if [[ "${PKR_SKIP_BUILD:-0}" != "1" && -z "${PKR_BIN_DIR:-}" ]]; then
        "$SCRIPT_DIR/build-control-plane.sh" >&2 \
            || die "build-control-plane.sh failed; see its output above"
    fi
    local c
    for c in kube-apiserver kube-controller-manager kube-scheduler; do
        [[ -x "$BIN_DIR/$c" ]] \
            || die "$BIN_DIR/$c is missing: run $SCRIPT_DIR/build-control-plane.sh first"
    done
    for c in etcd openssl curl python3; do
        command -v "$c" >/dev/null || die "'$c' not found (build-control-plane.sh installs etcd and openssl)"
    done
    local etcd_bin
    etcd_bin="$(command -v etcd)"

    # A fresh cluster every time: wipe the previous state but keep nothing running from it.
    rm -rf "$STATE_DIR/etcd" "$PKI_DIR" "$LOG_DIR" "$PIDS_FILE" "$ENV_FILE" \
        "$KUBECONFIG_ADMIN" "$KUBECONFIG_NARROW" "$KUBECONFIG_KCM" "$KUBECONFIG_SCHEDULER" \
        "$STATE_DIR/tokens.csv"
    mkdir -p "$STATE_DIR" "$LOG_DIR"
    # Keep the state dir out of git without touching the repository's .gitignore.
    [[ -f "$STATE_DIR/.gitignore" ]] || printf '*\n' >"$STATE_DIR/.gitignore"

    local ports
    ports="$(free_ports 5)" || die "cannot pick free ports"
    read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHEDULER_PORT <<<"$ports"
    SERVER="https://127.0.0.1:$API_PORT"
    ADMIN_TOKEN="$(openssl rand -hex 24)"
    local kcm_token scheduler_token narrow_token
    kcm_token="$(openssl rand -hex 24)"
    scheduler_token="$(openssl rand -hex 24)"
    narrow_token="$(openssl rand -hex 24)"

    gen_pki
    (
        umask 077
        printf '%s,%s,%s,"%s"\n' \
            "$ADMIN_TOKEN" pkr-admin pkr-admin system:masters \
            "$kcm_token" system:kube-controller-manager system:kube-controller-manager system:masters \
            "$scheduler_token" system:kube-scheduler system:kube-scheduler system:masters \
            "$narrow_token" "$NARROW_USER" "$NARROW_USER" pkr-testers \
            >"$STATE_DIR/tokens.csv"
    )
    write_kubeconfig "$KUBECONFIG_ADMIN" pkr-admin "$ADMIN_TOKEN" "$SERVER"
    write_kubeconfig "$KUBECONFIG_NARROW" "$NARROW_USER" "$narrow_token" "$SERVER"
    write_kubeconfig "$KUBECONFIG_KCM" system:kube-controller-manager "$kcm_token" "$SERVER"
    write_kubeconfig "$KUBECONFIG_SCHEDULER" system:kube-scheduler "$scheduler_token" "$SERVER"

    log "starting etcd on 127.0.0.1:$ETCD_PORT"
    start etcd "$etcd_bin" \
        --name=pkr-testbed \
        --data-dir="$STATE_DIR/etcd" \
        --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster="pkr-testbed=http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster-state=new
    wait_for etcd "etcd /health" etcd_healthy

    log "starting kube-apiserver on $SERVER"
    start_apiserver
    wait_for kube-apiserver "kube-apiserver /readyz" apiserver_ready
    log "kube-apiserver ready after $((SECONDS - t0))s"
    wait_for kube-apiserver "the default and kube-system namespaces" system_namespaces_exist

    create_narrow_rbac

    log "starting kube-controller-manager"
    # API rate 100/s (default 20): the Job controller otherwise needs ~5 minutes to start the
    # pods of 1000 Jobs, longer than the pod start timeouts the soak and benchmarks run with.
    start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
        --kubeconfig="$KUBECONFIG_KCM" \
        --authentication-kubeconfig="$KUBECONFIG_KCM" \
        --authorization-kubeconfig="$KUBECONFIG_KCM" \
        --bind-address=127.0.0.1 \
        --secure-port="$KCM_PORT" \
        --port=0 \
        --cert-dir="$PKI_DIR/controller-manager-selfsigned" \
        --leader-elect=false \
        --controllers=job,garbagecollector,namespace,serviceaccount,serviceaccount-token,ttl-after-finished \
        --service-account-private-key-file="$PKI_DIR/sa.key" \
        --root-ca-file="$PKI_DIR/ca.crt" \
        --kube-api-qps=100 \
        --kube-api-burst=200 \
        --feature-gates="$FEATURE_GATES"
    wait_for kube-controller-manager "kube-controller-manager /healthz" kcm_healthy
    # The serviceaccount controller creating `default` proves the controllers are running.
    wait_for kube-controller-manager "the default ServiceAccount" default_sa_exists

    log "starting kube-scheduler"
    # API rate 500/s (default 50): binding the soak's and the benchmark's thousand pods at the
    # default rate would take the scheduler 20 s and more, which is not what is measured there.
    start kube-scheduler "$BIN_DIR/kube-scheduler" \
        --kubeconfig="$KUBECONFIG_SCHEDULER" \
        --authentication-kubeconfig="$KUBECONFIG_SCHEDULER" \
        --authorization-kubeconfig="$KUBECONFIG_SCHEDULER" \
        --bind-address=127.0.0.1 \
        --secure-port="$SCHEDULER_PORT" \
        --port=0 \
        --cert-dir="$PKI_DIR/scheduler-selfsigned" \
        --leader-elect=false \
        --kube-api-qps=500 \
        --kube-api-burst=1000 \
        --feature-gates="$FEATURE_GATES"
    wait_for kube-scheduler "kube-scheduler /healthz" scheduler_healthy

    if [[ "${PKR_WITH_NODE:-0}" == "1" ]]; then
        [[ -x "$FAKE_KUBELET" ]] \
            || die "$FAKE_KUBELET is missing: build it with 'make testbed' (or set PKR_FAKE_KUBELET)"
        log "starting the fake kubelet (the node)"
        start fake-kubelet "$FAKE_KUBELET" --kubeconfig "$KUBECONFIG_ADMIN"
        wait_for fake-kubelet "the fake kubelet's node" fake_kubelet_ready
    fi

    cat >"$ENV_FILE" <<EOF
# Written by cluster.sh up; source it to reach the testbed.
PKR_KUBECONFIG=$KUBECONFIG_ADMIN
PKR_KUBECONFIG_NARROW=$KUBECONFIG_NARROW
PKR_APISERVER_URL=$SERVER
PKR_APISERVER_PORT=$API_PORT
PKR_ETCD_URL=http://127.0.0.1:$ETCD_PORT
PKR_CONTROLLER_MANAGER_PORT=$KCM_PORT
PKR_SCHEDULER_PORT=$SCHEDULER_PORT
PKR_CA_FILE=$PKI_DIR/ca.crt
PKR_BIN_DIR=$BIN_DIR
EOF
    UP_DONE=1
    trap - INT TERM EXIT
    log "up in $((SECONDS - t0))s: etcd :$ETCD_PORT, apiserver :$API_PORT, controller-manager :$KCM_PORT, scheduler :$SCHEDULER_PORT"
    log "kubeconfig (admin):  $KUBECONFIG_ADMIN"
    log "kubeconfig (narrow): $KUBECONFIG_NARROW"
    echo "export KUBECONFIG=$KUBECONFIG_ADMIN" 2>/dev/null || true
}

# Stop kube-apiserver alone and start it again on the same port with the same flags; etcd (and
# so every object) and the controller-manager keep running. Returns once /readyz answers.
cmd_restart_apiserver() {
    [[ -f "$ENV_FILE" ]] || die "not up (no $ENV_FILE)"
    SERVER="$(sed -n 's/^PKR_APISERVER_URL=//p' "$ENV_FILE")"
    API_PORT="$(sed -n 's/^PKR_APISERVER_PORT=//p' "$ENV_FILE")"
    ETCD_PORT="$(sed -n 's/^PKR_ETCD_URL=http:\/\/127.0.0.1://p' "$ENV_FILE")"
    BIN_DIR="$(sed -n 's/^PKR_BIN_DIR=//p' "$ENV_FILE")"
    ADMIN_TOKEN="$(sed -n 's/^ *token: //p' "$KUBECONFIG_ADMIN")"
    local name pid exe found=""
    while read -r name pid exe; do
        [[ "$name" == kube-apiserver ]] || continue
        found=1
        log "stopping kube-apiserver (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while pid_matches "$pid" "$exe" && ((SECONDS < deadline)); do sleep 0.1; done
        if pid_matches "$pid" "$exe"; then
            kill -KILL "$pid" 2>/dev/null || true
            while pid_matches "$pid" "$exe"; do sleep 0.1; done
        fi
    done < <(live_processes)
    [[ -n "$found" ]] || die "kube-apiserver is not running"
    local kept
    kept="$(awk '$1 != "kube-apiserver"' "$PIDS_FILE")"
    printf '%s\n' "$kept" >"$PIDS_FILE"
    mv "$LOG_DIR/kube-apiserver.log" "$LOG_DIR/kube-apiserver.previous.log"
    local t0=$SECONDS
    start_apiserver
    wait_for kube-apiserver "kube-apiserver /readyz" apiserver_ready
    log "kube-apiserver restarted on $SERVER, ready after $((SECONDS - t0))s"
}

cmd_down() {
    # A closed stdout must not kill this script between two processes (SIGPIPE): see log().
    trap '' PIPE
    if [[ ! -f "$PIDS_FILE" ]]; then
        log "not running (no $PIDS_FILE)"
        return 0
    fi
    stop_all 5
    log "down (logs kept in $LOG_DIR)"
}

cmd_status() {
    local live expected=4 n=0 name pid exe
    live="$(live_processes)"
    [[ -n "$live" ]] && n="$(wc -l <<<"$live")"
    # A stack started with its node counts the fake kubelet too.
    if [[ -f "$PIDS_FILE" ]] && grep -q '^fake-kubelet ' "$PIDS_FILE"; then
        expected=5
    fi
    if ((n == 0)); then
        echo "down"
        return 1
    fi
    while read -r name pid exe; do
        echo "  $name pid $pid"
    done <<<"$live"
    local server=""
    [[ -f "$ENV_FILE" ]] && server="$(sed -n 's/^PKR_APISERVER_URL=//p' "$ENV_FILE")"
    ADMIN_TOKEN="$(sed -n 's/^ *token: //p' "$KUBECONFIG_ADMIN" 2>/dev/null || true)"
    SERVER="$server"
    if ((n == expected)) && [[ -n "$server" ]] && apiserver_ready; then
        echo "up: $server"
        echo "kubeconfig: $KUBECONFIG_ADMIN"
        echo "kubeconfig-narrow: $KUBECONFIG_NARROW"
        return 0
    fi
    echo "degraded: $n of $expected processes running${server:+, apiserver $server not ready}"
    echo "kubeconfig: $KUBECONFIG_ADMIN"
    return 1
}

usage() {
    # The header comment, without the leading "# ".
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

main() {
    case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    restart-apiserver) cmd_restart_apiserver ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

# One line, read whole before it runs: an edit or checkout of this file while it runs (bash reads
# a script as it goes) cannot make it run half-shifted text after main returns.
main "$@"; exit $?
