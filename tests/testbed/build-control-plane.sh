#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kube-scheduler (Kubernetes v1.20.2) from the source of
# Debian bookworm's `kubernetes` package, fully offline once the source is downloaded.
#
# Idempotent: when both binaries are already in the cache and run, it exits in well under a
# second. Everything it produces (source tarballs, Go build cache, build log, binaries) lives in
#   ${PKR_CACHE:-$HOME/.cache/prefect-kubernetes-rs}/k8s-v1.20.2/
# and the binaries end up in its bin/ directory, whose path is the last line printed.
#
# Environment:
#   PKR_CACHE             cache root (default: $HOME/.cache/prefect-kubernetes-rs)
#   PKR_DEBIAN_MIRROR     Debian mirror URL to fetch the source from (default: the bookworm
#                         mirror already configured in /etc/apt)
#   PKR_BUILD_HEARTBEAT   seconds between progress lines during `make` (default: 30)
set -euo pipefail

readonly K8S_VERSION="v1.20.2"
# Commit of the upstream v1.20.2 tag; the source tarball has no .git, so the version is stamped
# explicitly (otherwise the binaries report v0.0.0-master and clients see a bogus server version).
readonly K8S_COMMIT="faecb196815e248d3ecfb03c680a4507229c2a56"
readonly SUITE="bookworm"
readonly SOURCE_PACKAGE="kubernetes"
readonly COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler)
readonly PACKAGES=(golang-go etcd-server etcd-client golang-github-modern-go-reflect2-dev rsync jq openssl)
readonly REFLECT2_SRC="/usr/share/gocode/src/github.com/modern-go/reflect2"

CACHE_ROOT="${PKR_CACHE:-$HOME/.cache/prefect-kubernetes-rs}"
CACHE_DIR="$CACHE_ROOT/k8s-$K8S_VERSION"
BIN_DIR="$CACHE_DIR/bin"
DOWNLOAD_DIR="$CACHE_DIR/source"   # .dsc + tarballs, kept so a rebuild needs no network
APT_DIR="$CACHE_DIR/apt"           # private apt lists/cache (never touches /etc/apt)
TREE_DIR="$CACHE_DIR/tree"         # unpacked, patched upstream tree
GO_CACHE_DIR="$CACHE_DIR/gocache"
BUILD_LOG="$CACHE_DIR/build.log"
HEARTBEAT="${PKR_BUILD_HEARTBEAT:-30}"
START_TS=$SECONDS

log() { printf '[%s] build-control-plane: %s\n' "$(date '+%H:%M:%S')" "$*"; }
phase() { log "== $* =="; }
die() {
    printf '[%s] build-control-plane: ERROR: %s\n' "$(date '+%H:%M:%S')" "$*" >&2
    exit 1
}

# --- (a) Debian packages -------------------------------------------------------------------

is_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == "installed" ]]
}

ensure_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        is_installed "$p" || missing+=("$p")
    done
    # Tests drive the cluster with kubectl; Debian's kubernetes-client provides one where the
    # machine has none of its own.
    command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
    # The end-to-end tests run their Prefect server on a PostgreSQL server of their own.
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
    # The keepalive test reads the worker's socket timers with `ss`.
    command -v ss >/dev/null 2>&1 || missing+=(iproute2)
    # The silent-connection test drops one connection's packets with a packet filter rule.
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    phase "packages: installing ${missing[*]}"
    if [[ $EUID -ne 0 ]]; then
        die "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
    log "packages installed"
}

# --- (b) cache check ---------------------------------------------------------------------------

binaries_ok() {
    local c out
    for c in "${COMPONENTS[@]}"; do
        [[ -x "$BIN_DIR/$c" ]] || return 1
        out="$("$BIN_DIR/$c" --version 2>/dev/null)" || return 1
        [[ "$out" == *"$K8S_VERSION"* ]] || return 1
    done
}

# --- (c) source download -----------------------------------------------------------------------

# Print "<uri> <signed-by or empty>" of the first configured `deb` source for the bookworm suite.
# Reads deb822 (*.sources) first, then one-line (*.list) files.
find_mirror() {
    local f
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        awk -v suite="$SUITE" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uri != "") {
                    print uri, signed; found = 1; exit
                }
                types = ""; suites = ""; uri = ""; signed = ""
            }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            {
                key = tolower($1); sub(/:$/, "", key)
                val = $0; sub(/^[^:]*:[[:space:]]*/, "", val)
                if (key == "types") types = val
                else if (key == "suites") suites = val
                else if (key == "uris") { split(val, u, /[[:space:]]+/); uri = u[1] }
                else if (key == "signed-by" && val !~ /^-----/) signed = val
            }
            END { if (!found) flush() }
        ' "$f" | head -n1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r "$f" ]] || continue
        awk -v suite="$SUITE" '
            $1 != "deb" { next }
            {
                i = 2; signed = ""
                if ($i ~ /^\[/) {
                    while (i <= NF) {
                        if ($i ~ /signed-by=/) { s = $i; sub(/.*signed-by=/, "", s); sub(/\]$/, "", s); signed = s }
                        if ($i ~ /\]$/) { i++; break }
                        i++
                    }
                }
                if ($(i + 1) == suite) { print $i, signed; exit }
            }
        ' "$f"
    done
    shopt -u nullglob
}

have_source() {
    compgen -G "$DOWNLOAD_DIR/${SOURCE_PACKAGE}_*.dsc" >/dev/null \
        && compgen -G "$DOWNLOAD_DIR/${SOURCE_PACKAGE}_*.orig.tar.*" >/dev/null
}

fetch_source() {
    if have_source; then
        log "source: using cached $(basename "$(compgen -G "$DOWNLOAD_DIR/${SOURCE_PACKAGE}_*.dsc" | head -n1)")"
        return 0
    fi
    local mirror signed
    if [[ -n "${PKR_DEBIAN_MIRROR:-}" ]]; then
        mirror="$PKR_DEBIAN_MIRROR"
        signed=""
    else
        read -r mirror signed < <(find_mirror | head -n1) || true
    fi
    [[ -n "${mirror:-}" ]] || die "no '$SUITE' apt source found in /etc/apt (set PKR_DEBIAN_MIRROR)"
    phase "source: downloading Debian $SUITE source package '$SOURCE_PACKAGE' from $mirror"

    rm -rf "$APT_DIR"
    mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$DOWNLOAD_DIR.partial"
    local opts=""
    [[ -n "${signed:-}" ]] && opts="[signed-by=$signed] "
    printf 'deb-src %s%s %s main\n' "$opts" "$mirror" "$SUITE" >"$APT_DIR/sources.list"
    local apt=(apt-get -q
        -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$APT_DIR/lists"
        -o "Dir::Cache=$APT_DIR/cache")
    # The private dirs live in the caller's home; apt's _apt download user cannot read them.
    [[ $EUID -eq 0 ]] && apt+=(-o "APT::Sandbox::User=root")

    "${apt[@]}" update >"$APT_DIR/update.log" 2>&1 \
        || { tail -n 20 "$APT_DIR/update.log" >&2; die "private apt-get update failed (log: $APT_DIR/update.log)"; }
    (cd "$DOWNLOAD_DIR.partial" && "${apt[@]}" source --download-only "$SOURCE_PACKAGE") \
        >"$APT_DIR/source.log" 2>&1 \
        || { tail -n 20 "$APT_DIR/source.log" >&2; die "apt-get source failed (log: $APT_DIR/source.log)"; }
    rm -rf "$DOWNLOAD_DIR"
    mv "$DOWNLOAD_DIR.partial" "$DOWNLOAD_DIR"
    have_source || die "downloaded files look incomplete: $(ls "$DOWNLOAD_DIR")"
    rm -rf "$APT_DIR"   # the private index is only needed for this one download
    log "source: $(du -sh "$DOWNLOAD_DIR" | cut -f1) in $DOWNLOAD_DIR"
}

# --- unpack + patch ----------------------------------------------------------------------------

prepare_tree() {
    local marker="$TREE_DIR/.pkr-prepared"
    if [[ -f "$marker" ]]; then
        log "tree: reusing $TREE_DIR"
        return 0
    fi
    phase "tree: unpacking upstream source"
    rm -rf "$TREE_DIR" "$TREE_DIR.partial"
    mkdir -p "$TREE_DIR.partial"
    local orig
    orig="$(compgen -G "$DOWNLOAD_DIR/${SOURCE_PACKAGE}_*.orig.tar.*" | head -n1)"
    # The orig tarball holds the upstream tree under one top-level directory.
    tar -xf "$orig" -C "$TREE_DIR.partial" --strip-components=1 \
        || die "cannot unpack $orig"
    [[ -f "$TREE_DIR.partial/cmd/kube-apiserver/apiserver.go" ]] \
        || die "unexpected layout in $orig (no cmd/kube-apiserver)"

    log "tree: replacing vendored github.com/modern-go/reflect2 with $REFLECT2_SRC"
    local vendored="$TREE_DIR.partial/vendor/github.com/modern-go/reflect2"
    [[ -d "$vendored" ]] || die "no vendored reflect2 in the source tree"
    [[ -d "$REFLECT2_SRC" ]] || die "$REFLECT2_SRC missing (package golang-github-modern-go-reflect2-dev)"
    find "$vendored" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
    find "$REFLECT2_SRC" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
        -exec cp -L {} "$vendored/" \;
    compgen -G "$vendored/*.go" >/dev/null || die "reflect2 replacement copied no files"

    # Version stamp read by hack/lib/version.sh (there is no .git to derive it from).
    cat >"$TREE_DIR.partial/.pkr-version" <<EOF
KUBE_GIT_COMMIT='$K8S_COMMIT'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='$K8S_VERSION'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
EOF
    touch "$TREE_DIR.partial/.pkr-prepared"
    mv "$TREE_DIR.partial" "$TREE_DIR"
}

# --- build -------------------------------------------------------------------------------------

MAKE_PID=""
# Called from traps only.
# shellcheck disable=SC2317
stop_make() {
    if [[ -n "$MAKE_PID" ]] && kill -0 "$MAKE_PID" 2>/dev/null; then
        # make runs in its own process group (setsid below): stop the whole build.
        kill -TERM -- "-$MAKE_PID" 2>/dev/null || true
    fi
}

build() {
    phase "build: make WHAT=\"${COMPONENTS[*]/#/cmd/}\" (cold ~5-15 min, warm ~1-2 min; log: $BUILD_LOG)"
    mkdir -p "$GO_CACHE_DIR" "$TREE_DIR/_output/local/go"
    # hack/lib/golang.sh forces GOCACHE=_output/local/go/cache: point that at the cache dir so
    # the Go build cache survives a fresh unpack of the tree.
    local tree_cache="$TREE_DIR/_output/local/go/cache"
    if [[ ! -L "$tree_cache" ]]; then
        if [[ -d "$tree_cache" ]]; then
            rm -rf "$GO_CACHE_DIR"
            mv "$tree_cache" "$GO_CACHE_DIR"
        fi
        ln -s "$GO_CACHE_DIR" "$tree_cache"
    fi
    local what="${COMPONENTS[*]/#/cmd/}"
    trap stop_make EXIT
    trap 'stop_make; log "interrupted: build stopped (rerun to resume with a warm cache)"; exit 130' INT TERM
    (
        cd "$TREE_DIR"
        export GOFLAGS=-mod=vendor GOPROXY=off GOSUMDB=off CGO_ENABLED=0
        export GOTOOLCHAIN=local
        export KUBE_GIT_VERSION_FILE="$TREE_DIR/.pkr-version"
        exec setsid make WHAT="$what"
    ) >"$BUILD_LOG" 2>&1 </dev/null &
    MAKE_PID=$!

    local t0=$SECONDS next=$((SECONDS + HEARTBEAT)) rc=0 last
    while kill -0 "$MAKE_PID" 2>/dev/null; do
        sleep 1
        if ((SECONDS >= next)) && kill -0 "$MAKE_PID" 2>/dev/null; then
            last="$(tail -n 1 "$BUILD_LOG" 2>/dev/null | cut -c1-100)"
            log "build: still running, $((SECONDS - t0))s elapsed, log $(wc -l <"$BUILD_LOG") lines; last: ${last:-<none>}"
            next=$((SECONDS + HEARTBEAT))
        fi
    done
    wait "$MAKE_PID" || rc=$?
    MAKE_PID=""
    trap - EXIT INT TERM
    if ((rc != 0)); then
        printf '%s\n' "----- last 40 lines of $BUILD_LOG -----" >&2
        tail -n 40 "$BUILD_LOG" >&2
        printf '%s\n' "-----" >&2
        die "make failed with exit code $rc after $((SECONDS - t0))s (full log: $BUILD_LOG)"
    fi
    log "build: make finished in $((SECONDS - t0))s"
}

install_binaries() {
    phase "install: copying binaries to $BIN_DIR"
    mkdir -p "$BIN_DIR"
    local c src
    for c in "${COMPONENTS[@]}"; do
        src="$TREE_DIR/_output/local/bin/linux/amd64/$c"
        [[ -x "$src" ]] || src="$TREE_DIR/_output/bin/$c"
        [[ -x "$src" ]] || die "build produced no $c (looked under $TREE_DIR/_output)"
        cp "$src" "$BIN_DIR/.$c.tmp.$$"
        chmod 0755 "$BIN_DIR/.$c.tmp.$$"
        mv -f "$BIN_DIR/.$c.tmp.$$" "$BIN_DIR/$c"
    done
    binaries_ok || die "installed binaries do not run or do not report $K8S_VERSION"
    log "install: $("$BIN_DIR/kube-apiserver" --version)"
}

main() {
    mkdir -p "$CACHE_DIR"
    # One build per cache dir at a time (a second caller waits, then finds the cache warm).
    exec 9>"$CACHE_DIR/.lock"
    if ! flock -n 9; then
        log "another build holds $CACHE_DIR/.lock; waiting"
        flock 9
    fi

    ensure_packages
    if binaries_ok; then
        log "cached: $K8S_VERSION binaries present and running ($((SECONDS - START_TS))s)"
        echo "$BIN_DIR"
        return 0
    fi
    phase "building Kubernetes $K8S_VERSION control plane into $CACHE_DIR"
    fetch_source
    prepare_tree
    build
    install_binaries
    log "done in $((SECONDS - START_TS))s"
    echo "$BIN_DIR"
}

main "$@"
exit $?
