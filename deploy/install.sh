#!/bin/sh
# The container image's install steps, kept here so they run the same everywhere: the
# Dockerfile's build stage runs `deploy/install.sh /opt/esm`, and CI, which has no Docker
# engine, runs `deploy/install.sh --check`: the same steps on the same files (the ones the
# Dockerfile copies, listed in SOURCES), into a temporary venv, then the smoke test below,
# which uses the result the way the image does (`esm validate`, `esm run`, the HEALTHCHECK
# command). So the Dockerfile cannot rot unnoticed.
#
# usage: deploy/install.sh PREFIX              install esm from this checkout into a new venv
#        deploy/install.sh --check [PREFIX]    the same into PREFIX (default: a temporary
#                                              directory, removed after), then smoke-test it
# env:   PYTHON   the interpreter the venv is made from (default python3; 3.11+)
set -eu

# What the Dockerfile's build stage copies into /src; tests/test_deploy_manifests.py checks
# that both lists agree.
SOURCES="pyproject.toml README.md esm deploy/install.sh"

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
python=${PYTHON:-python3}

usage() {
    echo "usage: $0 PREFIX | $0 --check [PREFIX]" >&2
    exit 2
}

install_esm() {
    prefix=$1
    # A venv of its own: the image copies it whole into its runtime stage, so it must keep
    # this path there (/opt/esm) and the same interpreter (both stages use one base image).
    "$python" -m venv "$prefix"
    "$prefix/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check "$src"
    # The image's HEALTHCHECK: slim images have no curl.
    cat >"$prefix/bin/esm-healthcheck" <<EOF
#!$prefix/bin/python
"""Exit 0 when esm's /healthz answers 200 (ESM_HEALTHCHECK_URL, default port 9464)."""
import os
import sys
import urllib.request

url = os.environ.get("ESM_HEALTHCHECK_URL", "http://127.0.0.1:9464/healthz")
try:
    with urllib.request.urlopen(url, timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:
    print(f"esm-healthcheck: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
EOF
    chmod 0755 "$prefix/bin/esm-healthcheck"
    "$prefix/bin/esm" --help >/dev/null
}

smoke_test() {
    prefix=$1
    checkout=$2
    work=$3
    for config in "$checkout"/deploy/systemd/config.toml "$checkout"/deploy/docker/config.toml; do
        "$prefix/bin/esm" validate -c "$config"
    done
    port=$("$prefix/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$work/config.toml" <<EOF
[daemon]
http_address = "127.0.0.1:$port"
[state]
path = "$work/state/esm-state.sqlite3"
EOF
    "$prefix/bin/esm" run -c "$work/config.toml" 2>"$work/esm.log" &
    pid=$!
    healthy=0
    for _ in $(seq 1 100); do
        if ESM_HEALTHCHECK_URL="http://127.0.0.1:$port/healthz" "$prefix/bin/esm-healthcheck" 2>/dev/null; then
            healthy=1
            break
        fi
        sleep 0.1
    done
    kill -TERM "$pid"
    status=0
    wait "$pid" || status=$?
    if [ "$healthy" != 1 ] || [ "$status" != 0 ]; then
        echo "install.sh --check: esm-healthcheck healthy=$healthy, esm run exit status $status" >&2
        cat "$work/esm.log" >&2
        exit 1
    fi
    echo "install.sh --check: installed into $prefix; validate, run, healthcheck and SIGTERM ok"
}

if [ "${1:-}" = "--check" ]; then
    shift
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT INT TERM
    prefix=${1:-$work/esm}
    # Build from exactly the files the Dockerfile copies, not the whole checkout.
    mkdir -p "$work/src/deploy"
    for path in $SOURCES; do
        cp -R "$src/$path" "$work/src/$path"
    done
    find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
    checkout=$src
    src=$work/src
    install_esm "$prefix"
    smoke_test "$prefix" "$checkout" "$work"
elif [ $# -eq 1 ] && [ "${1#-}" = "$1" ]; then
    install_esm "$1"
else
    usage
fi
