#!/usr/bin/env bash
# Smoke test of fault-proxy against the real control plane: every fault, through kubectl and
# curl, with the counters checked after each step.
#
#   tests/testbed/fault-proxy/smoke.sh
#
# Environment:
#   PKR_CLUSTER_DIR   cluster state dir (default /tmp/pkr-proxy-cluster). If a stack is already
#                     up there it is used and left running; otherwise one is started and stopped.
#   FAULT_PROXY_BIN   proxy binary (default: build it with cargo, use target/debug/fault-proxy)
#
# Pod logs need a kubelet. The script plays a minimal one itself: a Node object whose
# kubeletEndpoint is a tiny HTTPS server (python3) serving /containerLogs/..., and a Pod bound
# to that node by spec.nodeName. The apiserver proxies `pods/<p>/log` to it.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
export PKR_CLUSTER_DIR="${PKR_CLUSTER_DIR:-/tmp/pkr-proxy-cluster}"
CLUSTER_SH="$REPO/tests/testbed/cluster.sh"
WORK="$(mktemp -d /tmp/fault-proxy-smoke.XXXXXX)"
NS="fp-smoke-$(date +%s)"
NODE="fp-smoke-node-$$"
PASS=0
FAIL=0
PIDS=()
STARTED_CLUSTER=0

log() { printf '[%s] smoke: %s\n' "$(date +%H:%M:%S)" "$*"; }
ok() {
    PASS=$((PASS + 1))
    printf '  PASS  %s\n' "$*"
}
bad() {
    FAIL=$((FAIL + 1))
    printf '  FAIL  %s\n' "$*"
}
check() { # check "description" command...
    local what="$1"
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
last_byte_hex() { tail -c1 "$1" | od -An -tx1 | tr -d ' \n'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    if ((STARTED_CLUSTER)); then
        "$CLUSTER_SH" down >/dev/null 2>&1 || true
        log "cluster stopped"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- setup ---------------------------------------------------------------------------------------

if [[ -z "${FAULT_PROXY_BIN:-}" ]]; then
    log "building pkr-fault-proxy"
    (cd "$REPO" && cargo build -q -p pkr-fault-proxy) || exit 1
    FAULT_PROXY_BIN="$REPO/target/debug/fault-proxy"
fi

if "$CLUSTER_SH" status >/dev/null 2>&1; then
    log "using the running cluster in $PKR_CLUSTER_DIR"
else
    log "starting the cluster in $PKR_CLUSTER_DIR"
    "$CLUSTER_SH" up >"$WORK/cluster-up.log" 2>&1 || {
        cat "$WORK/cluster-up.log"
        exit 1
    }
    STARTED_CLUSTER=1
fi
ADMIN_KC="$PKR_CLUSTER_DIR/kubeconfig"
NARROW_KC="$PKR_CLUSTER_DIR/kubeconfig-narrow"
TOKEN="$(awk '$1 == "token:" { print $2; exit }' "$ADMIN_KC")"
direct() { kubectl --kubeconfig "$ADMIN_KC" "$@"; }

# start_proxy NAME ARGS... : start a proxy, wait for its ready line, set <NAME>_LISTEN/_CONTROL
start_proxy() {
    local name="$1"
    shift
    "$FAULT_PROXY_BIN" --kubeconfig "$ADMIN_KC" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    local i
    for ((i = 0; i < 100; i++)); do
        grep -q '^fault-proxy ready' "$WORK/$name.out" 2>/dev/null && break
        sleep 0.1
    done
    local line
    line="$(grep '^fault-proxy ready' "$WORK/$name.out")" || {
        cat "$WORK/$name.err"
        exit 1
    }
    log "$line"
    printf -v "${name}_LISTEN" '%s' "$(sed 's/.* listen=\([^ ]*\).*/\1/' <<<"$line")"
    printf -v "${name}_CONTROL" '%s' "$(sed 's/.* control=\([^ ]*\).*/\1/' <<<"$line")"
}

# The main proxy serves HTTPS: client-go (kubectl) only sends bearer tokens over TLS.
start_proxy TLSP --tls --tls-ca-out "$WORK/proxy-ca.pem" \
    --write-kubeconfig "$WORK/kc" --rewrite-kubeconfig "$NARROW_KC=$WORK/kc-narrow"
P="https://$TLSP_LISTEN"
C="http://$TLSP_CONTROL"
export KUBECONFIG="$WORK/kc"

ctl() { curl -sS -f "$@"; }
rule() { ctl -X POST "$C/rules" -d "$1" | jq -r .id; }
clear_rules() { ctl -X DELETE "$C/rules" >/dev/null; }
reset_counts() { ctl -X POST "$C/counts/reset" >/dev/null; }
counts() { ctl "$C/counts"; }
# api METHOD PATH [curl args...]: request through the proxy as admin
api() {
    local m="$1" p="$2"
    shift 2
    curl -sS --cacert "$WORK/proxy-ca.pem" -H "Authorization: Bearer $TOKEN" -X "$m" "$P$p" "$@"
}

direct create namespace "$NS" >/dev/null || exit 1
for i in 1 2 3 4; do direct -n "$NS" create configmap "cm$i" --from-literal=k=v >/dev/null || exit 1; done

# --- 1. plain proxying ------------------------------------------------------------------------------
log "1. plain proxying (kubectl, admin and narrow users)"
check "kubectl get pods through the proxy" kubectl get pods -n "$NS"
out="$(kubectl -n "$NS" get configmaps -o name | sort | tr '\n' ' ')"
check "kubectl lists the 4 configmaps ($out)" test "$out" = "configmap/cm1 configmap/cm2 configmap/cm3 configmap/cm4 "
out="$(kubectl --kubeconfig "$WORK/kc-narrow" get namespaces 2>&1)"
check "narrow user's token passes through: cluster-scoped namespaces list is Forbidden" grep -q Forbidden <<<"$out"
check "narrow user can list pods in default" kubectl --kubeconfig "$WORK/kc-narrow" get pods -n default

# --- 2. watch cut after 2 events ---------------------------------------------------------------------
log "2. watch cut after 2 events"
clear_rules
rule '{"verb":"watch","action":"cut-after-events","events":2,"times":1}' >/dev/null
t0="$(now)"
api GET "/api/v1/namespaces/$NS/configmaps?watch=true" -N -m 20 >"$WORK/w2"
rc=$?
took="$(secs_since "$t0")"
check "curl watch ended cleanly (rc=$rc) after ${took}s" test "$rc" = 0
check "exactly 2 events arrived ($(wc -l <"$WORK/w2"))" test "$(wc -l <"$WORK/w2")" = 2
check "both are complete ADDED events" test "$(jq -r .type "$WORK/w2" | tr '\n' ' ')" = "ADDED ADDED "
check "the rule is exhausted" test "$(ctl "$C/rules" | jq '.rules[0].exhausted')" = true

# --- 3. 410 ERROR event ----------------------------------------------------------------------------
log "3. watch answered with a 410 ERROR event (HTTP 200)"
clear_rules
rule '{"verb":"watch","action":"gone-event","events":1,"times":1}' >/dev/null
api GET "/api/v1/namespaces/$NS/configmaps?watch=1&resourceVersion=1" -N -m 20 -o "$WORK/w3" -w '%{http_code}' >"$WORK/w3.code"
check "HTTP 200 ($(cat "$WORK/w3.code"))" test "$(cat "$WORK/w3.code")" = 200
check "1 event then ERROR" test "$(jq -r .type "$WORK/w3" | tr '\n' ' ')" = "ADDED ERROR "
check "ERROR is a Status with code 410, reason Expired" \
    test "$(tail -n1 "$WORK/w3" | jq -c '[.object.kind, .object.code, .object.reason]')" = '["Status",410,"Expired"]'
check "message names the resourceVersion" grep -q 'too old resource version: 1' "$WORK/w3"
rule '{"verb":"watch","action":"gone-event","times":1}' >/dev/null
out="$(timeout 20 kubectl -n "$NS" get configmaps --watch-only -o json 2>&1)"
check "kubectl get --watch-only shows the 410 Status" grep -q '"code": 410' <<<"$out"

# --- 4. create: 503 once, then success -----------------------------------------------------------
log "4. create answered 503 once, then success on retry"
clear_rules
reset_counts
rule '{"verb":"create","path":"/configmaps$","action":"status","code":503,"times":1}' >/dev/null
out="$(kubectl -n "$NS" create configmap retry1 --from-literal=k=v 2>&1)"
rc=$?
check "first kubectl create fails with 503 ServiceUnavailable (rc=$rc: $out)" grep -qi 'ServiceUnavailable\|service unavailable' <<<"$out"
check "retry succeeds" kubectl -n "$NS" create configmap retry1 --from-literal=k=v
n="$(counts | jq '.patterns["/api/v1/namespaces/{ns}/configmaps"].create')"
check "2 create requests seen ($n)" test "$n" = 2
check "statuses: one 503, one 201" test "$(counts | jq -c '[.statuses["503"], .statuses["201"]]')" = '[1,1]'
n="$(direct -n "$NS" get configmaps -o name | grep -c retry1)"
check "exactly one object exists ($n)" test "$n" = 1
# With Retry-After, client-go retries by itself: one kubectl command, two requests.
reset_counts
rule '{"verb":"create","path":"/configmaps$","action":"status","code":503,"retry_after":1,"times":1}' >/dev/null
t0="$(now)"
check "kubectl create with 503 + Retry-After: 1 succeeds in one command" kubectl -n "$NS" create configmap retry2 --from-literal=k=v
took="$(secs_since "$t0")"
n="$(counts | jq '.patterns["/api/v1/namespaces/{ns}/configmaps"].create')"
check "... after 2 create requests ($n) and >= 1 s (${took}s)" bash -c "test '$n' = 2 && awk 'BEGIN{exit !($took >= 1)}'"

# --- 5. 429 with Retry-After ---------------------------------------------------------------------
log "5. 429 with Retry-After"
clear_rules
rule '{"verb":"list","path":"/configmaps$","action":"status","code":429,"retry_after":2,"times":1}' >/dev/null
api GET "/api/v1/namespaces/$NS/configmaps" -D "$WORK/h5" -o "$WORK/b5"
check "HTTP 429 ($(head -n1 "$WORK/h5" | tr -d '\r'))" grep -q '^HTTP/1.1 429' "$WORK/h5"
check "Retry-After: 2 header" grep -qi '^retry-after: 2' "$WORK/h5"
check "Status body: TooManyRequests, retryAfterSeconds 2" \
    test "$(jq -c '[.kind,.reason,.code,.details.retryAfterSeconds]' "$WORK/b5")" = '["Status","TooManyRequests",429,2]'
reset_counts
rule '{"verb":"list","path":"/configmaps$","action":"status","code":429,"retry_after":1,"times":1}' >/dev/null
t0="$(now)"
out="$(kubectl -n "$NS" get configmaps -o name 2>&1)"
took="$(secs_since "$t0")"
check "kubectl honours Retry-After and then succeeds (${took}s)" bash -c "grep -q configmap/cm1 <<<'$out' && awk 'BEGIN{exit !($took >= 1)}'"
check "2 list requests seen" test "$(counts | jq '.patterns["/api/v1/namespaces/{ns}/configmaps"].list')" = 2

# --- 6. latency ----------------------------------------------------------------------------------
log "6. 2 s delay"
clear_rules
rule '{"verb":"get","path":"/configmaps/cm1$","action":"delay","ms":2000,"times":1}' >/dev/null
t0="$(now)"
api GET "/api/v1/namespaces/$NS/configmaps/cm1" -o /dev/null
took="$(secs_since "$t0")"
check "delayed get took ${took}s (>= 2.0)" ge "$took" 2.0
t0="$(now)"
api GET "/api/v1/namespaces/$NS/configmaps/cm1" -o /dev/null
took="$(secs_since "$t0")"
check "next get took ${took}s (< 0.5)" lt "$took" 0.5

# --- 7. connection reset ---------------------------------------------------------------------------
log "7. connection reset"
clear_rules
rule '{"verb":"get","path":"/configmaps/cm1$","action":"reset","times":1}' >/dev/null
api GET "/api/v1/namespaces/$NS/configmaps/cm1" -o /dev/null 2>"$WORK/e7"
rc=$?
check "curl sees a reset (rc=$rc: $(tr '\n' ' ' <"$WORK/e7"))" bash -c "test $rc = 56 && grep -qi 'reset by peer' '$WORK/e7'"
check "the next request works" api GET "/api/v1/namespaces/$NS/configmaps/cm1" -f -o /dev/null
rule '{"verb":"create","action":"reset","after_upstream":true,"times":1}' >/dev/null
api POST "/api/v1/namespaces/$NS/configmaps" -H 'Content-Type: application/json' \
    -d '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"lost-reply"}}' -o /dev/null 2>/dev/null
rc=$?
check "reset after_upstream: client sees a reset (rc=$rc)..." test "$rc" = 56
check "... but the object was created" direct -n "$NS" get configmap lost-reply -o name

# --- 8. cuts by bytes and seconds on watch streams ---------------------------------------------------
log "8. watch cut after N bytes (mid-line) and after N seconds"
clear_rules
rule '{"verb":"watch","action":"cut-after-bytes","bytes":150,"times":1}' >/dev/null
api GET "/api/v1/namespaces/$NS/configmaps?watch=true" -N -m 20 -o "$WORK/w8"
rc=$?
check "watch ended cleanly (rc=$rc) after exactly 150 bytes ($(wc -c <"$WORK/w8"))" bash -c "test $rc = 0 && test $(wc -c <"$WORK/w8") = 150"
check "cut mid-line (no trailing newline, invalid JSON)" bash -c "! jq -e . '$WORK/w8' >/dev/null 2>&1"
rule '{"verb":"watch","action":"cut-after-seconds","seconds":1.5,"times":"all"}' >/dev/null
for i in 1 2; do
    t0="$(now)"
    api GET "/api/v1/namespaces/$NS/configmaps?watch=true&resourceVersion=0" -N -m 20 -o /dev/null
    rc=$?
    took="$(secs_since "$t0")"
    check "watch #$i cut after ${took}s (rc=$rc; 1.5 <= t < 3)" bash -c "test $rc = 0 && awk 'BEGIN{exit !($took >= 1.5 && $took < 3)}'"
done
clear_rules
rule '{"verb":"watch","action":"cut-after-events","events":1,"abrupt":true,"times":1}' >/dev/null
api GET "/api/v1/namespaces/$NS/configmaps?watch=true" -N -m 20 -o "$WORK/w8b" 2>/dev/null
rc=$?
check "abrupt cut: 1 event, then the connection drops without the final chunk (curl rc=$rc)" \
    bash -c "test $rc = 18 -o $rc = 56 && test $(wc -l <"$WORK/w8b") = 1"

# --- 9. pod log stream cut after N bytes ------------------------------------------------------------
log "9. pod log stream cut after N bytes / seconds (mini kubelet)"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$WORK/kubelet.key" -out "$WORK/kubelet.crt" >/dev/null 2>&1
python3 - "$WORK" >"$WORK/kubelet.log" 2>&1 <<'EOF' &
import http.server, ssl, socketserver, sys, time, urllib.parse
work = sys.argv[1]

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(u.query)
        if not u.path.startswith("/containerLogs/"):
            self.send_error(404)
            return
        follow = q.get("follow", ["false"])[0] == "true"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        try:
            for i in range(600 if follow else 20):
                self.wfile.write(b"log line %04d: the quick brown fox jumps over the lazy dog\n" % i)
                self.wfile.flush()
                if follow:
                    time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *a):
        pass

class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

srv = S(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(work + "/kubelet.crt", work + "/kubelet.key")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(work + "/kubelet.port", "w") as f:
    f.write(str(srv.server_address[1]))
srv.serve_forever()
EOF
PIDS+=($!)
for ((i = 0; i < 50; i++)); do [[ -s "$WORK/kubelet.port" ]] && break; sleep 0.1; done
KPORT="$(cat "$WORK/kubelet.port")"
direct create -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "$NODE"},
 "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": $KPORT}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "smoke"}]}}
EOF
direct -n "$NS" create -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "logpod"},
 "spec": {"nodeName": "$NODE", "containers": [{"name": "main", "image": "busybox"}]}}
EOF
n="$(kubectl -n "$NS" logs logpod | wc -l)"
check "kubectl logs (no follow) through the proxy: 20 lines ($n)" test "$n" = 20
clear_rules
reset_counts
rule '{"verb":"get","path":"/log$","query":"follow=true","action":"cut-after-bytes","bytes":100,"times":1}' >/dev/null
t0="$(now)"
timeout 20 kubectl -n "$NS" logs -f logpod >"$WORK/log9"
rc=$?
took="$(secs_since "$t0")"
check "kubectl logs -f ended (rc=$rc) after ${took}s with exactly 100 bytes ($(wc -c <"$WORK/log9"))" \
    bash -c "test $rc = 0 && test $(wc -c <"$WORK/log9") = 100"
check "cut mid-line (ends with '$(tail -c 12 "$WORK/log9")')" test "$(last_byte_hex "$WORK/log9")" != 0a
rule '{"verb":"get","path":"/log$","action":"cut-after-seconds","seconds":2,"times":1}' >/dev/null
t0="$(now)"
timeout 20 kubectl -n "$NS" logs -f logpod >"$WORK/log9b"
rc=$?
took="$(secs_since "$t0")"
check "kubectl logs -f cut after ${took}s (rc=$rc, 2 <= t < 4, $(wc -l <"$WORK/log9b") lines)" \
    bash -c "test $rc = 0 && awk 'BEGIN{exit !($took >= 2 && $took < 4)}'"

# Long-running requests open now: one followed log + one watch.
clear_rules
reset_counts
timeout 20 kubectl -n "$NS" logs -f logpod >/dev/null &
LOGPID=$!
api GET "/api/v1/namespaces/$NS/configmaps?watch=true" -N -m 3 -o /dev/null &
WPID=$!
sleep 1.5
lr="$(counts | jq -c '.long_running')"
check "2 long-running requests open ($lr)" test "$(jq .open <<<"$lr")" = 2
kill "$LOGPID" 2>/dev/null
wait "$WPID" "$LOGPID" 2>/dev/null
sleep 0.5
lr="$(counts | jq -c '.long_running')"
check "after they end: open 0, peak 2 ($lr)" test "$lr" = '{"open":0,"peak":2,"total":2}'

# --- 10. counts by verb ------------------------------------------------------------------------------
log "10. counts by verb and path pattern"
clear_rules
reset_counts
CM="/api/v1/namespaces/$NS/configmaps"
JSONH=(-H 'Content-Type: application/json')
api GET "$CM" -o /dev/null                                    # list
api GET "$CM/cm1" -o /dev/null                                # get
api GET "$CM/cm2" -o /dev/null                                # get
api POST "$CM" "${JSONH[@]}" -d '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"v1","labels":{"x":"y"}}}' -o /dev/null # create
api PUT "$CM/v1" "${JSONH[@]}" -d '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"v1","labels":{"x":"y"}},"data":{"a":"b"}}' -o /dev/null # update
api PATCH "$CM/v1" -H 'Content-Type: application/merge-patch+json' -d '{"data":{"c":"d"}}' -o /dev/null # patch
api GET "/api/v1/watch/namespaces/$NS/configmaps" -m 1 -o /dev/null # watch (path form)
api GET "$CM?watch=True" -m 1 -o /dev/null                    # watch (capitalised, as kubernetes_asyncio sends)
api DELETE "$CM/v1" -o /dev/null                              # delete
api DELETE "$CM?labelSelector=x%3Dy" -o /dev/null             # deletecollection
api GET "/version" -o /dev/null                               # non-resource get
c="$(counts)"
check "verbs: $(jq -c .verbs <<<"$c")" test "$(jq -c .verbs <<<"$c")" \
    = '{"get":3,"list":1,"watch":2,"create":1,"update":1,"patch":1,"delete":1,"deletecollection":1}'
check "pattern {ns}/configmaps: $(jq -c '.patterns["/api/v1/namespaces/{ns}/configmaps"]' <<<"$c")" \
    test "$(jq -c '.patterns["/api/v1/namespaces/{ns}/configmaps"]' <<<"$c")" = '{"list":1,"watch":2,"create":1,"deletecollection":1}'
check "pattern {ns}/configmaps/{name}: $(jq -c '.patterns["/api/v1/namespaces/{ns}/configmaps/{name}"]' <<<"$c")" \
    test "$(jq -c '.patterns["/api/v1/namespaces/{ns}/configmaps/{name}"]' <<<"$c")" = '{"get":2,"update":1,"patch":1,"delete":1}'
check "raw path counted too" test "$(jq -c --arg p "$CM/cm1" '.paths[$p]' <<<"$c")" = '{"get":1}'
check "total 11" test "$(jq .total <<<"$c")" = 11

# --- 11. plain-HTTP listener ------------------------------------------------------------------------
log "11. plain-HTTP listener (curl passes the token; --inject-token for token-less clients)"
start_proxy HTTPP --write-kubeconfig "$WORK/kc-http" --inject-token
code="$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://$HTTPP_LISTEN/api/v1/namespaces/$NS/pods")"
check "curl with the token over http: $code" test "$code" = 200
check "kubectl over http (token injected by the proxy)" kubectl --kubeconfig "$WORK/kc-http" -n "$NS" get configmap cm1 -o name

# --- done --------------------------------------------------------------------------------------------
direct delete namespace "$NS" --wait=false >/dev/null 2>&1
direct delete node "$NODE" >/dev/null 2>&1
printf '\n%d passed, %d failed\n' "$PASS" "$FAIL"
if ((FAIL)); then
    echo "--- proxy log (tail) ---"
    tail -n 30 "$WORK/TLSP.err"
    exit 1
fi
