#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kube-scheduler (Kubernetes v1.20.2) from the source of
# Debian bookworm's `kubernetes` package, fully offline once the source is downloaded.
#
# Idempotent: when both binaries are already in the cache and run, it exits in well under a
# second. Everything it produces (source tarballs, Go build cache, build log, binaries) lives in
#   ${PKR_CACHE:-$HOME/.cache/prefect-kubernetes-rs}/k8s-v1.20.2/
# and the binaries end up in its bin/ directory, whose path is what it prints on stdout (its
# progress goes to stderr).
#
# Environment:
#   PKR_CACHE             cache root (default: $HOME/.cache/prefect-kubernetes-rs)
#   PKR_DEBIAN_MIRROR     Debian mirror URL to fetch the source from (default: the mirror
#                         already configured in /etc/apt, its first non-security `deb` source)
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
START_TS=$SECONDS

# shellcheck disable=SC2034 # read by tests/lib/debian.sh
PKR_SCRIPT=build-control-plane
# shellcheck source-path=SCRIPTDIR/../lib source=debian.sh
source "$(dirname "$0")/../lib/debian.sh"

# --- (a) Debian packages -------------------------------------------------------------------

ensure_packages() {
    local needed=("${PACKAGES[@]}")
    # Tests drive the cluster with kubectl; Debian's kubernetes-client provides one where the
    # machine has none of its own.
    command -v kubectl >/dev/null 2>&1 || needed+=(kubernetes-client)
    # The end-to-end tests run their Prefect server on a PostgreSQL server of their own.
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || needed+=(postgresql)
    # The keepalive test reads the worker's socket timers with `ss`.
    command -v ss >/dev/null 2>&1 || needed+=(iproute2)
    # The silent-connection test drops one connection's packets with a packet filter rule.
    command -v nft >/dev/null 2>&1 || needed+=(nftables)
    debian_install "${needed[@]}"
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

fetch_source() {
    debian_fetch_source "$SUITE" "$SOURCE_PACKAGE" "$DOWNLOAD_DIR" "$APT_DIR"
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
    orig="$(debian_orig_tarball "$DOWNLOAD_DIR" "$SOURCE_PACKAGE")"
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
    : >"$BUILD_LOG"
    run_step build "$TREE_DIR" "$BUILD_LOG" env GOFLAGS=-mod=vendor GOPROXY=off GOSUMDB=off \
        CGO_ENABLED=0 GOTOOLCHAIN=local KUBE_GIT_VERSION_FILE="$TREE_DIR/.pkr-version" \
        make WHAT="${COMPONENTS[*]/#/cmd/}"
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
