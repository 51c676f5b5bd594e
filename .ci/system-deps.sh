#!/usr/bin/env bash
# Debian packages that tests use beyond Python: nginx for the deployment tests, what the
# browser tests need (.ci/browser-deps.sh) and JupyterHub's proxy (.ci/hub-deps.sh).
# Idempotent: returns at once when all is present.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v nginx >/dev/null && ! [ -x /usr/sbin/nginx ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nginx >/dev/null
    # Debian starts the service on install; the tests run their own nginx on loopback. Stop
    # only that service (never other nginx processes on this machine).
    { service nginx stop || true; } >/dev/null 2>&1
fi
bash browser-deps.sh
bash hub-deps.sh
