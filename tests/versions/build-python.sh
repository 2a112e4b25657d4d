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
# with the interpreter in its install/bin directory, whose path is what it prints on stdout (its
# progress goes to stderr).
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

# shellcheck disable=SC2034 # read by tests/lib/debian.sh
PKR_SCRIPT=build-python
# shellcheck source-path=SCRIPTDIR/../lib source=debian.sh
source "$(dirname "$0")/../lib/debian.sh"

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

# --- source download -----------------------------------------------------------------------------

fetch_source() {
    debian_fetch_source "$SUITE" "$SOURCE_PACKAGE" "$DOWNLOAD_DIR" "$APT_DIR"
}

# --- unpack ------------------------------------------------------------------------------------

prepare_tree() {
    if [[ -f "$TREE_DIR/.pkr-unpacked" ]]; then
        log "tree: reusing $TREE_DIR"
        return 0
    fi
    local orig
    orig="$(debian_orig_tarball "$DOWNLOAD_DIR" "$SOURCE_PACKAGE")"
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

build() {
    : >"$BUILD_LOG"
    phase "build: configure, make -j$(nproc), make install into $PREFIX (log: $BUILD_LOG)"
    # configure again whenever the tree was not configured for this prefix.
    if [[ "$(cat "$TREE_DIR/.pkr-configured" 2>/dev/null || true)" != "$PREFIX" ]]; then
        rm -f "$TREE_DIR/.pkr-configured"
        run_step configure "$TREE_DIR" "$BUILD_LOG" ./configure --prefix="$PREFIX" --disable-test-modules
        echo "$PREFIX" >"$TREE_DIR/.pkr-configured"
    fi
    run_step make "$TREE_DIR" "$BUILD_LOG" make -j"$(nproc)"
    # Say which optional modules were left out (their -dev packages are not installed).
    grep -A3 -E 'necessary bits to build these optional modules were not found|Following modules built successfully but were removed|Failed to build these modules' \
        "$BUILD_LOG" | sed 's/^/    /' >&2 || true
    rm -rf "$PREFIX"
    run_step install "$TREE_DIR" "$BUILD_LOG" make install
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
    debian_install "${PACKAGES[@]}"
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
