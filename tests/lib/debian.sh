# shellcheck shell=bash
# Shared by the scripts that build the testbed's parts from Debian's packages
# (tests/testbed/build-control-plane.sh, tests/versions/build-python.sh): Debian packages
# installed where missing, a source package downloaded through the machine's own apt mirror
# (read from /etc/apt at run time, never named here) with a private apt configuration, and a
# long build step run with a heartbeat. Sourced, not run.
#
# The caller sets PKR_SCRIPT (the name its lines start with) before sourcing. Progress goes to
# stderr, so a script's standard output is only what it answers (a path, as its last line).
# Environment: PKR_DEBIAN_MIRROR (a mirror URL instead of the machine's), PKR_BUILD_HEARTBEAT
# (seconds between progress lines of a build step, default 30).

log() { printf '[%s] %s: %s\n' "$(date '+%H:%M:%S')" "$PKR_SCRIPT" "$*" >&2; }
phase() { log "== $* =="; }
die() {
    printf '[%s] %s: ERROR: %s\n' "$(date '+%H:%M:%S')" "$PKR_SCRIPT" "$*" >&2
    exit 1
}

debian_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == "installed" ]]
}

# debian_install PACKAGE...: installs those of the packages that are not installed (as root).
debian_install() {
    local missing=() package
    for package in "$@"; do
        debian_installed "$package" || missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return 0
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

# Prints "<uri> <signed-by or empty>" of the first configured Debian `deb` source that is not a
# security archive: the mirror the machine installs its packages from. Reads deb822
# (*.sources) first, then one-line (*.list) files.
debian_mirror() {
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

# debian_orig_tarball DIR PACKAGE: the upstream tarball of a downloaded source package.
debian_orig_tarball() {
    { compgen -G "$1/${2}_*.orig.tar.*" || true; } | grep -v '\.asc$' | head -n1 || true
}

# debian_source_present DIR PACKAGE: the package's .dsc and upstream tarball are in DIR.
debian_source_present() {
    compgen -G "$1/${2}_*.dsc" >/dev/null && [[ -n "$(debian_orig_tarball "$1" "$2")" ]]
}

# debian_fetch_source SUITE PACKAGE DOWNLOAD_DIR APT_DIR: downloads the source package into
# DOWNLOAD_DIR (kept, so a rebuild needs no network) through a private apt configuration in
# APT_DIR (removed afterwards); /etc/apt is left alone. Nothing to do when it is there already.
debian_fetch_source() {
    local suite="$1" package="$2" download_dir="$3" apt_dir="$4"
    if debian_source_present "$download_dir" "$package"; then
        log "source: using cached $(basename "$(debian_orig_tarball "$download_dir" "$package")")"
        return 0
    fi
    local mirror signed
    if [[ -n "${PKR_DEBIAN_MIRROR:-}" ]]; then
        mirror="$PKR_DEBIAN_MIRROR"
        signed=""
    else
        read -r mirror signed < <(debian_mirror | head -n1) || true
    fi
    [[ -n "${mirror:-}" ]] || die "no Debian apt source found in /etc/apt (set PKR_DEBIAN_MIRROR)"
    phase "source: downloading Debian $suite source package '$package' from $mirror"

    rm -rf "$apt_dir" "$download_dir.partial"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$download_dir.partial"
    local opts=""
    [[ -n "${signed:-}" ]] && opts="[signed-by=$signed] "
    printf 'deb-src %s%s %s main\n' "$opts" "$mirror" "$suite" >"$apt_dir/sources.list"
    local apt=(apt-get -q
        -o "Dir::Etc::SourceList=$apt_dir/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir/cache")
    # The private dirs live in the caller's home; apt's _apt download user cannot read them.
    [[ $EUID -eq 0 ]] && apt+=(-o "APT::Sandbox::User=root")

    "${apt[@]}" update >"$apt_dir/update.log" 2>&1 \
        || { tail -n 20 "$apt_dir/update.log" >&2; die "private apt-get update failed (log: $apt_dir/update.log)"; }
    (cd "$download_dir.partial" && "${apt[@]}" source --download-only "$package") \
        >"$apt_dir/source.log" 2>&1 \
        || { tail -n 20 "$apt_dir/source.log" >&2; die "apt-get source $package ($suite) failed (log: $apt_dir/source.log)"; }
    rm -rf "$download_dir"
    mv "$download_dir.partial" "$download_dir"
    debian_source_present "$download_dir" "$package" \
        || die "downloaded files look incomplete: $(ls "$download_dir")"
    rm -rf "$apt_dir"   # the private index is only needed for this one download
    log "source: $(du -sh "$download_dir" | cut -f1) in $download_dir"
}

STEP_PID=""
# Called from traps only.
# shellcheck disable=SC2317
stop_step() {
    if [[ -n "$STEP_PID" ]] && kill -0 "$STEP_PID" 2>/dev/null; then
        # Each step runs in its own process group (setsid below): stop all of it.
        kill -TERM -- "-$STEP_PID" 2>/dev/null || true
    fi
}

# run_step NAME DIR LOG CMD...: runs CMD in DIR, its output appended to LOG, with a progress
# line every PKR_BUILD_HEARTBEAT seconds; on failure shows the log's tail and dies. Ctrl-C or
# SIGTERM stop the whole step (a rerun resumes from the caches).
run_step() {
    local name="$1" dir="$2" step_log="$3"
    shift 3
    local heartbeat="${PKR_BUILD_HEARTBEAT:-30}"
    trap stop_step EXIT
    trap 'stop_step; log "interrupted: build stopped (rerun to resume)"; exit 130' INT TERM
    printf '\n===== %s: %s =====\n' "$name" "$*" >>"$step_log"
    (cd "$dir" && exec setsid "$@") >>"$step_log" 2>&1 </dev/null &
    STEP_PID=$!
    local t0=$SECONDS next=$((SECONDS + heartbeat)) rc=0 last
    while kill -0 "$STEP_PID" 2>/dev/null; do
        sleep 1
        if ((SECONDS >= next)) && kill -0 "$STEP_PID" 2>/dev/null; then
            last="$(tail -n 1 "$step_log" 2>/dev/null | cut -c1-100)"
            log "$name: still running, $((SECONDS - t0))s elapsed, log $(wc -l <"$step_log") lines; last: ${last:-<none>}"
            next=$((SECONDS + heartbeat))
        fi
    done
    wait "$STEP_PID" || rc=$?
    STEP_PID=""
    trap - EXIT INT TERM
    if ((rc != 0)); then
        printf '%s\n' "----- last 40 lines of $step_log -----" >&2
        tail -n 40 "$step_log" >&2
        printf '%s\n' "-----" >&2
        die "$name failed with exit code $rc after $((SECONDS - t0))s (full log: $step_log)"
    fi
    log "$name: done in $((SECONDS - t0))s"
}
