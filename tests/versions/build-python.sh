#!/usr/bin/env bash
# Build a CPython interpreter from the upstream tarball inside a Debian source package, so the
# project can test on Python versions the machine does not have.
#
# Usage: tests/versions/build-python.sh VERSION      (VERSION: 3.13, ...; see SOURCES below)
#
# Idempotent: when the interpreter is already built and its modules import, it exits in well
# under a second. Everything it produces (source files, build log, install; the unpacked tree
# while building) lives in
#   ${PKR_CACHE:-$HOME/.cache/prefect-kubernetes-rs}/python-VERSION/
# with the interpreter in its install/bin directory; its path is the last line printed.
#
# Only the upstream `.orig` tarball is used (Debian's patches are ignored), configured with
# `--prefix=<cache>/python-VERSION/install` and no `--enable-optimizations` (a fast build).
#
# Environment:
#   PKR_CACHE             cache root (default: $HOME/.cache/prefect-kubernetes-rs)
#   PKR_DEBIAN_MIRROR     Debian mirror URL to fetch the source from (default: the mirror already
#                         configured in /etc/apt)
#   PKR_PYTHON_SUITE      Debian suite to take the source package from (default: see SOURCES)
#   PKR_BUILD_HEARTBEAT   seconds between progress lines during `make` (default: 30)
set -euo pipefail

# VERSION -> Debian suite whose `pythonVERSION` source package holds that upstream release.
# No Debian suite the mirror serves has a python3.10 source package (bullseye has 3.9, bookworm
# 3.11, trixie 3.13), so 3.10 cannot be built: for it the script prints the path of a working
# python3.10 the machine already has (pyenv's, on this project's machine image) or fails; see
# tests/versions/README.md.
# Other suites' packages (bullseye: python3.9, bookworm: python3.11, sid: newer 3.13 and 3.14)
# can be added here, or picked with PKR_PYTHON_SUITE; only 3.13 from trixie has been built.
declare -A SOURCES=(
    [3.13]=trixie
)
# What must work in the built interpreter: TLS and hashes (pip), sqlite3 (Prefect's database),
# ctypes, the compression modules, venv and ensurepip.
readonly REQUIRED_MODULES="ssl _hashlib sqlite3 _ctypes zlib bz2 lzma venv ensurepip _decimal pyexpat"
# The build dependencies of those modules (on top of a C compiler); the optional modules
# (readline, curses, dbm.gnu, tkinter, _uuid) are left out and just not built when absent.
readonly PACKAGES=(build-essential pkg-config xz-utils libssl-dev libffi-dev zlib1g-dev
    libsqlite3-dev libbz2-dev liblzma-dev)

log() { printf '[%s] build-python: %s\n' "$(date '+%H:%M:%S')" "$*"; }
phase() { log "== $* =="; }
die() {
    printf '[%s] build-python: ERROR: %s\n' "$(date '+%H:%M:%S')" "$*" >&2
    exit 1
}

if [[ $# -ne 1 || ! "$1" =~ ^3\.[0-9]+$ ]]; then
    die "usage: $0 VERSION (one of: $(printf '%s\n' "${!SOURCES[@]}" | sort -V | tr '\n' ' '))"
fi
readonly VERSION="$1"
SUITE="${PKR_PYTHON_SUITE:-${SOURCES[$VERSION]:-}}"
readonly SUITE
readonly SOURCE_PACKAGE="python$VERSION"

CACHE_ROOT="${PKR_CACHE:-$HOME/.cache/prefect-kubernetes-rs}"
CACHE_DIR="$CACHE_ROOT/python-$VERSION"
PREFIX="$CACHE_DIR/install"
PYTHON="$PREFIX/bin/python$VERSION"
DOWNLOAD_DIR="$CACHE_DIR/source"   # .dsc + tarballs, kept so a rebuild needs no network
APT_DIR="$CACHE_DIR/apt"           # private apt lists/cache (never touches /etc/apt)
TREE_DIR="$CACHE_DIR/tree"         # unpacked upstream tree, built in place, removed when done
BUILD_LOG="$CACHE_DIR/build.log"
HEARTBEAT="${PKR_BUILD_HEARTBEAT:-30}"
START_TS=$SECONDS

# --- cache check -------------------------------------------------------------------------------

# interpreter_ok [PYTHON]: it runs, is $VERSION and imports the required modules.
interpreter_ok() {
    local python="${1:-$PYTHON}" out
    [[ -x "$python" ]] || return 1
    out="$("$python" -c "
import sys
import $(echo "$REQUIRED_MODULES" | tr ' ' ',')
print('%d.%d' % sys.version_info[:2])" 2>/dev/null)" || return 1
    [[ "$out" == "$VERSION" ]]
}

# No source package: an interpreter the machine already has, newest patch release first. The
# machine image may ship pyenv-built ones (${PYENV_ROOT:-~/.pyenv}/versions/X.Y.Z); pyenv
# itself cannot install more here (its downloads are not reachable).
preinstalled_interpreter() {
    local candidate
    while read -r candidate; do
        if interpreter_ok "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done < <({
        compgen -G "${PYENV_ROOT:-$HOME/.pyenv}/versions/$VERSION.*/bin/python$VERSION" || true
        command -v "python$VERSION" || true
    } | sort -rV)
    return 1
}

# --- Debian packages ---------------------------------------------------------------------------

is_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == "installed" ]]
}

ensure_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        is_installed "$p" || missing+=("$p")
    done
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

# --- source download -----------------------------------------------------------------------------

# Print "<uri> <signed-by or empty>" of the first configured Debian `deb` source that is not a
# security archive (any suite: the private sources list below names its own). Reads deb822
# (*.sources) first, then one-line (*.list) files.
find_mirror() {
    local f
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && suites !~ /-security/ && uri != "") {
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
        awk '
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
                if ($(i + 1) !~ /-security/) { print $i, signed; exit }
            }
        ' "$f"
    done
    shopt -u nullglob
}

orig_tarball() {
    { compgen -G "$DOWNLOAD_DIR/${SOURCE_PACKAGE}_*.orig.tar.*" || true; } | grep -v '\.asc$' | head -n1 || true
}

have_source() {
    compgen -G "$DOWNLOAD_DIR/${SOURCE_PACKAGE}_*.dsc" >/dev/null && [[ -n "$(orig_tarball)" ]]
}

fetch_source() {
    if have_source; then
        log "source: using cached $(basename "$(orig_tarball)")"
        return 0
    fi
    local mirror signed
    if [[ -n "${PKR_DEBIAN_MIRROR:-}" ]]; then
        mirror="$PKR_DEBIAN_MIRROR"
        signed=""
    else
        read -r mirror signed < <(find_mirror | head -n1) || true
    fi
    [[ -n "${mirror:-}" ]] || die "no Debian apt source found in /etc/apt (set PKR_DEBIAN_MIRROR)"
    phase "source: downloading Debian $SUITE source package '$SOURCE_PACKAGE' from $mirror"

    rm -rf "$APT_DIR" "$DOWNLOAD_DIR.partial"
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
        || { tail -n 20 "$APT_DIR/source.log" >&2; die "apt-get source $SOURCE_PACKAGE ($SUITE) failed (log: $APT_DIR/source.log)"; }
    rm -rf "$DOWNLOAD_DIR"
    mv "$DOWNLOAD_DIR.partial" "$DOWNLOAD_DIR"
    have_source || die "downloaded files look incomplete: $(ls "$DOWNLOAD_DIR")"
    rm -rf "$APT_DIR"   # the private index is only needed for this one download
    log "source: $(du -sh "$DOWNLOAD_DIR" | cut -f1) in $DOWNLOAD_DIR"
}

# --- unpack ------------------------------------------------------------------------------------

prepare_tree() {
    if [[ -f "$TREE_DIR/.pkr-unpacked" ]]; then
        log "tree: reusing $TREE_DIR"
        return 0
    fi
    local orig
    orig="$(orig_tarball)"
    phase "tree: unpacking $(basename "$orig") (upstream source only, no Debian patches)"
    rm -rf "$TREE_DIR" "$TREE_DIR.partial"
    mkdir -p "$TREE_DIR.partial"
    # The orig tarball holds the upstream tree under one top-level directory (Python-3.x.y).
    tar -xf "$orig" -C "$TREE_DIR.partial" --strip-components=1 || die "cannot unpack $orig"
    [[ -x "$TREE_DIR.partial/configure" && -f "$TREE_DIR.partial/Include/patchlevel.h" ]] \
        || die "unexpected layout in $orig (no configure / Include/patchlevel.h)"
    grep -q "PY_VERSION[[:space:]]*\"$VERSION\." "$TREE_DIR.partial/Include/patchlevel.h" \
        || die "$orig is not Python $VERSION: $(grep 'define PY_VERSION ' "$TREE_DIR.partial/Include/patchlevel.h")"
    touch "$TREE_DIR.partial/.pkr-unpacked"
    mv "$TREE_DIR.partial" "$TREE_DIR"
}

# --- build -------------------------------------------------------------------------------------

STEP_PID=""
# Called from traps only.
# shellcheck disable=SC2317
stop_step() {
    if [[ -n "$STEP_PID" ]] && kill -0 "$STEP_PID" 2>/dev/null; then
        # Each step runs in its own process group (setsid below): stop all of it.
        kill -TERM -- "-$STEP_PID" 2>/dev/null || true
    fi
}

# run_step NAME CMD...: run CMD in the tree, output appended to the build log, with a heartbeat.
run_step() {
    local name="$1"
    shift
    trap stop_step EXIT
    trap 'stop_step; log "interrupted: build stopped (rerun to resume)"; exit 130' INT TERM
    printf '\n===== %s: %s =====\n' "$name" "$*" >>"$BUILD_LOG"
    (cd "$TREE_DIR" && exec setsid "$@") >>"$BUILD_LOG" 2>&1 </dev/null &
    STEP_PID=$!
    local t0=$SECONDS next=$((SECONDS + HEARTBEAT)) rc=0 last
    while kill -0 "$STEP_PID" 2>/dev/null; do
        sleep 1
        if ((SECONDS >= next)) && kill -0 "$STEP_PID" 2>/dev/null; then
            last="$(tail -n 1 "$BUILD_LOG" 2>/dev/null | cut -c1-100)"
            log "$name: still running, $((SECONDS - t0))s elapsed; last: ${last:-<none>}"
            next=$((SECONDS + HEARTBEAT))
        fi
    done
    wait "$STEP_PID" || rc=$?
    STEP_PID=""
    trap - EXIT INT TERM
    if ((rc != 0)); then
        printf '%s\n' "----- last 40 lines of $BUILD_LOG -----" >&2
        tail -n 40 "$BUILD_LOG" >&2
        printf '%s\n' "-----" >&2
        die "$name failed with exit code $rc after $((SECONDS - t0))s (full log: $BUILD_LOG)"
    fi
    log "$name: done in $((SECONDS - t0))s"
}

build() {
    : >"$BUILD_LOG"
    phase "build: configure, make -j$(nproc), make install into $PREFIX (log: $BUILD_LOG)"
    # configure again whenever the tree was not configured for this prefix.
    if [[ "$(cat "$TREE_DIR/.pkr-configured" 2>/dev/null || true)" != "$PREFIX" ]]; then
        rm -f "$TREE_DIR/.pkr-configured"
        run_step configure ./configure --prefix="$PREFIX" --disable-test-modules
        echo "$PREFIX" >"$TREE_DIR/.pkr-configured"
    fi
    run_step make make -j"$(nproc)"
    # Say which optional modules were left out (their -dev packages are not installed).
    grep -A3 -E 'necessary bits to build these optional modules were not found|Following modules built successfully but were removed|Failed to build these modules' \
        "$BUILD_LOG" | sed 's/^/    /' || true
    rm -rf "$PREFIX"
    run_step install make install
}

check_interpreter() {
    interpreter_ok || {
        "$PYTHON" -c "import $(echo "$REQUIRED_MODULES" | tr ' ' ',')" >&2 || true
        die "$PYTHON does not run, is not $VERSION, or lacks one of: $REQUIRED_MODULES"
    }
    local venv
    venv="$(mktemp -d)"
    "$PYTHON" -m venv "$venv/v" || { rm -rf "$venv"; die "$PYTHON -m venv failed"; }
    "$venv/v/bin/python" -m pip --version >/dev/null || { rm -rf "$venv"; die "pip does not run in a venv of $PYTHON"; }
    rm -rf "$venv"
    log "check: $("$PYTHON" -c 'import sys, ssl; print(sys.version.split()[0], "|", ssl.OPENSSL_VERSION)'); venv + pip ok"
}

main() {
    if [[ -z "$SUITE" ]]; then
        local found
        if found="$(preinstalled_interpreter)"; then
            log "no Debian source package for Python $VERSION; using the machine's $found (not built)"
            echo "$found"
            return 0
        fi
        if [[ "$VERSION" == "3.10" ]]; then
            die "no Debian suite has a python3.10 source package (bullseye: 3.9, bookworm: 3.11, trixie: 3.13) and the machine has no working python3.10; see tests/versions/README.md"
        fi
        die "no Debian suite known for Python $VERSION (known: ${!SOURCES[*]}; or set PKR_PYTHON_SUITE)"
    fi
    mkdir -p "$CACHE_DIR"
    # One build per cache dir at a time (a second caller waits, then finds the cache warm).
    exec 9>"$CACHE_DIR/.lock"
    if ! flock -n 9; then
        log "another build holds $CACHE_DIR/.lock; waiting"
        flock 9
    fi

    if interpreter_ok; then
        log "cached: Python $VERSION at $PYTHON ($((SECONDS - START_TS))s)"
        echo "$PYTHON"
        return 0
    fi
    phase "building Python $VERSION (Debian $SUITE source) into $CACHE_DIR"
    ensure_packages
    fetch_source
    prepare_tree
    build
    check_interpreter
    # The unpacked tree (~430 MB) is not needed any more: a rebuild unpacks the cached source.
    rm -rf "$TREE_DIR"
    log "done in $((SECONDS - START_TS))s"
    echo "$PYTHON"
}

main "$@"
exit $?
