#!/usr/bin/env bash
# The supported Prefect and Python versions, each in a virtual environment of its own holding the
# release wheel (`make wheel`) as a user installs it: the configuration tests and the end-to-end
# happy path (a Prefect server of that version, `prefect worker start --type kubernetes-rs`, a
# flow run on the testbed) in each.
#
# Usage: tests/versions/test-matrix.sh [PYTHON:PREFECT ...]   (default: the matrix below)
#
# PREFECT is a pip requirement's version part (`==3.7.1`, `>=3.9,<4`). The venvs are kept in
# .venv-versions/ and made again only when the wheel or the requirements change.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The oldest Prefect the worker supports (3.7.1: the first with everything it uses, see the
# README's "Versions") and the newest each Python gets (Prefect 3.9 needs Python 3.11).
readonly DEFAULT_MATRIX=("3.10:==3.7.1" "3.10:>=3.7.1,<3.9" "3.13:==3.7.1" "3.13:>=3.9,<4")
readonly TESTS=(
    tests/test_configuration.py
    "tests/test_end_to_end.py::test_completed_run_streams_its_log_and_carries_labels_annotations_and_environment"
)
# What the test tools need beside the wheel.
readonly TEST_TOOLS=("pytest>=8" "pytest-asyncio>=0.23" "pytest-timeout>=2.3")

log() { printf '[%s] test-matrix: %s\n' "$(date '+%H:%M:%S')" "$*"; }
die() {
    printf '[%s] test-matrix: ERROR: %s\n' "$(date '+%H:%M:%S')" "$*" >&2
    exit 1
}

# Constraints of the Prefect *server* the end-to-end test starts from the same venv: Prefect
# 3.7 and 3.8 do not cap FastAPI, and its later releases break their servers at start
# (3.7.1: 'PrefectRouter' object has no attribute 'routes' from 0.137; 3.8.8: Body() got an
# unexpected keyword argument 'min_items' from 0.155).
server_constraints() {
    case "$1" in
        "==3.7."*) echo "fastapi<0.137" ;;
        *"<3.9") echo "fastapi<0.155" ;;
        *) ;;
    esac
}

shopt -s nullglob
wheels=(dist/prefect_kubernetes_rs-*manylinux_2_17_x86_64*.whl)
((${#wheels[@]} == 1)) || die "expected one release wheel in dist/ (make wheel), found ${#wheels[@]}"
readonly WHEEL="${wheels[0]}"

matrix=("$@")
((${#matrix[@]})) || matrix=("${DEFAULT_MATRIX[@]}")
failed=()
for entry in "${matrix[@]}"; do
    python_version="${entry%%:*}"
    prefect_spec="${entry#*:}"
    python="$(tests/versions/build-python.sh "$python_version" | tail -n1)"
    slug="$(printf 'py%s-prefect%s' "$python_version" "$prefect_spec" | tr -c 'A-Za-z0-9.\n' '_')"
    venv=".venv-versions/$slug"
    mapfile -t constraints < <(server_constraints "$prefect_spec")
    requirements=("$WHEEL" "prefect$prefect_spec" "${TEST_TOOLS[@]}" "${constraints[@]}")
    wanted="$(sha256sum "$WHEEL" | cut -c1-16) ${requirements[*]}"
    if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.requirements" 2>/dev/null)" != "$wanted" ]]; then
        log "Python $python_version, prefect$prefect_spec: a new venv in $venv"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
        echo "$wanted" > "$venv/.requirements"
    fi
    prefect_version="$("$venv/bin/python" -c 'import prefect; print(prefect.__version__)')"
    log "Python $python_version, Prefect $prefect_version: ${TESTS[*]}"
    if "$venv/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"; then
        log "Python $python_version, Prefect $prefect_version: passed"
    else
        failed+=("Python $python_version with Prefect $prefect_version")
    fi
done
if ((${#failed[@]})); then
    die "failed: ${failed[*]}"
fi
log "every combination passed: ${matrix[*]}"
