#!/usr/bin/env bash
# What the class-server test (tests/live/test_jupyterhub.py) needs beyond Python packages
# (JupyterHub itself is a dev dependency in pyproject.toml): JupyterHub's proxy,
# configurable-http-proxy, from the npm registry, installed into .venv/node/ (never globally),
# where deploy/jupyterhub/jupyterhub_config.py finds it. Node.js comes from Debian when
# missing. Idempotent: returns at once when the proxy is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=.venv/node
if [ -x "$PREFIX/node_modules/.bin/configurable-http-proxy" ]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
mkdir -p "$PREFIX"
npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error configurable-http-proxy@4
