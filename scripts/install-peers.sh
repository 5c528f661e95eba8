#!/usr/bin/env bash
# Install the peer systems bench/sync_latency.py compares hdsd with (--peers pg,etcd,redis):
# Debian's PostgreSQL, etcd and Redis servers, and the small Python client libraries the
# benchmark uses (psycopg, redis; matplotlib for the plots) into the interpreter given as $PYTHON
# (default: the one on PATH). Idempotent: what is already there is left alone.
#
#     sudo scripts/install-peers.sh          # or as root; PYTHON=/path/to/venv/bin/python to pick
#
# The benchmark never needs the packages' own services: it runs every server itself, in a
# temporary directory, on 127.0.0.1, and stops them at the end. So the Debian services that the
# packages start (or enable) are stopped here, to keep their ports and CPU free.
set -euo pipefail

PYTHON=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    || need+=(postgresql)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)

if [ ${#need[@]} -gt 0 ]; then
    echo "install-peers: installing ${need[*]}" >&2
    $SUDO apt-get update -q
    # policy-rc.d 101: do not start the packages' services during installation (no systemd in
    # containers, and the benchmark starts its own instances anyway).
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod +x "$policy"
        made_policy=1
    fi
    trap '[ "$made_policy" = 1 ] && $SUDO rm -f "$policy"' EXIT
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${need[@]}"
else
    echo "install-peers: postgresql, etcd and redis-server already installed" >&2
fi

# Stop the packaged services if something started them (ignore failures: there may be none).
for svc in postgresql etcd redis-server; do
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
done

if "$PYTHON" -c "import psycopg, redis, matplotlib" >/dev/null 2>&1; then
    echo "install-peers: Python clients already installed for $PYTHON" >&2
else
    "$PYTHON" -m pip install -q "psycopg[binary]" redis matplotlib
fi
echo "install-peers: done" >&2
