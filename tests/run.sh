#!/usr/bin/env bash
# The project's one test command (see README), from any directory:
#
#     bash tests/run.sh [pytest arguments]        e.g.  bash tests/run.sh -m "not slow"
#
# 1. Installs only what is missing: redis-server, nginx and chromium with apt (sudo when not
#    root), the project with its dev extras with pip, the npm packages of tests/js.
# 2. Runs ruff check, ruff format --check, mypy and pytest, stopping at the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

have() { command -v "$1" >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

install_system_packages() {
    local missing=()
    have redis-server || missing+=(redis-server)
    have nginx || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    have chromium || have chromium-browser || missing+=(chromium)
    have promtool || missing+=(prometheus)  # promtool checks /metrics output
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    if [ -f tests/js/package.json ] && ! have npm; then missing+=(nodejs npm); fi
    [ "${#missing[@]}" -eq 0 ] && return 0

    if ! have apt-get; then
        log "apt-get is not available: install ${missing[*]} yourself; tests needing them will fail"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ] && ! have sudo; then
        log "not root and no sudo: install ${missing[*]} yourself; tests needing them will fail"
        return 0
    fi
    log "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    local packages=() package
    for package in "${missing[@]}"; do
        # Debian 12 ships the small nginx-light; later releases fold it into nginx.
        if [ "$package" = nginx ] && apt-cache show nginx-light >/dev/null 2>&1; then
            package=nginx-light
        fi
        packages+=("$package")
    done
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${packages[@]}"
}

install_python_packages() {
    # Reinstall when pyproject.toml or the interpreter changed, or the project is not installed.
    local stamp=build/.dev-deps-stamp want
    want="$(python3 --version 2>&1) $(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && python3 -m pip show django-ws-gateway >/dev/null 2>&1; then
        return 0
    fi
    local flags=(--quiet)
    # A system Python outside a virtualenv refuses pip installs (PEP 668) unless told.
    if python3 -c 'import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(marker) else 1)'; then
        flags+=(--break-system-packages)
    fi
    log "pip install -e '.[dev]'"
    python3 -m pip install "${flags[@]}" -e '.[dev]'
    mkdir -p build
    printf '%s\n' "$want" >"$stamp"
}

install_node_packages() {
    local dir
    for dir in tests/js bench; do
        [ -f "$dir/package.json" ] || continue
        # Installed already when every dependency is there (a package added to package.json
        # since the last install is not).
        if [ -d "$dir/node_modules" ] && python3 -c 'import json, os, sys
deps = json.load(open(sys.argv[1] + "/package.json")).get("dependencies", {})
ok = all(os.path.isfile(f"{sys.argv[1]}/node_modules/{d}/package.json") for d in deps)
sys.exit(0 if ok else 1)' "$dir"; then
            continue
        fi
        if ! have npm; then
            log "npm is not available: the node tests will fail"
            return 0
        fi
        log "npm packages for $dir"
        if [ -f "$dir/package-lock.json" ]; then
            (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
        else
            (cd "$dir" && npm install --no-audit --no-fund --loglevel=error)
        fi
    done
}

install_system_packages
install_python_packages
install_node_packages

log "ruff check"
python3 -m ruff check --no-cache .
log "ruff format --check"
python3 -m ruff format --no-cache --check .
log "mypy"
python3 -m mypy
log "pytest $*"
exec python3 -m pytest "$@"
