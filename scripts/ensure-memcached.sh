#!/usr/bin/env sh
# Make sure a `memcached` binary is available for tests/test_backend_memcached.py (the tests start their own
# server on a free port; nothing is started here). Installs the Debian/Ubuntu package when missing.
set -eu

if command -v memcached >/dev/null 2>&1; then
    echo "memcached present: $(memcached -V)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "memcached is missing and apt-get is not available: install memcached with your package manager" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends memcached
# The package starts a system service on some images; the tests never use it.
echo "memcached installed: $(memcached -V)"
