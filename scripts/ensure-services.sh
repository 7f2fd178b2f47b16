#!/usr/bin/env bash
# Makes sure the programs the test suite runs are installed: MariaDB, Mosquitto and Redis (the
# tests start private instances of them on free loopback ports, see tests/services.py), Node.js
# (the TTN formatter tests), Debian's Chromium (the browser tests), systemd-analyze and nginx (the
# deploy tests). Installs what is missing
# with apt-get; does nothing, and calls no apt, when all is present. It starts nothing: package
# scripts are told not to start the services they install.
set -euo pipefail

SBIN_DIRS=(/usr/sbin /usr/local/sbin /sbin)

have() {
    local name dir
    for name in "$@"; do
        command -v "$name" >/dev/null 2>&1 && return 0
        for dir in "${SBIN_DIRS[@]}"; do
            [[ -x "$dir/$name" ]] && return 0
        done
    done
    return 1
}

missing=()
have mariadbd mysqld || missing+=("mariadbd")
have mariadb-install-db mysql_install_db || missing+=("mariadb-install-db")
have mosquitto || missing+=("mosquitto")
have redis-server || missing+=("redis-server")
have node || missing+=("node")

packages=()
if ((${#missing[@]})); then
    packages+=(mariadb-server mosquitto redis-server nodejs)
fi
if [[ ! -x /usr/bin/chromium ]]; then
    missing+=("/usr/bin/chromium")
    packages+=(chromium)
fi
# The deploy tests: systemd-analyze verifies the units, nginx -t the site (tests/test_deploy.py).
if ! have systemd-analyze; then
    missing+=("systemd-analyze")
    packages+=(systemd)
fi
if ! have nginx; then
    missing+=("nginx")
    packages+=(nginx-light)
fi

if ((${#packages[@]} == 0)); then
    exit 0
fi

echo "ensure-services: missing ${missing[*]}; installing ${packages[*]}" >&2

if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
    echo "ensure-services: not root and no sudo; as root run: apt-get install -y" \
        "--no-install-recommends ${packages[*]}" >&2
    exit 1
fi
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

# Debian's maintainer scripts start a service they install unless policy-rc.d says no (101).
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    added_policy=1
fi
cleanup() {
    if ((added_policy)); then
        as_root rm -f "$policy"
    fi
}
trap cleanup EXIT

as_root env DEBIAN_FRONTEND=noninteractive apt-get update
as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${packages[@]}"

still=()
have mariadbd mysqld || still+=("mariadbd")
have mariadb-install-db mysql_install_db || still+=("mariadb-install-db")
have mosquitto || still+=("mosquitto")
have redis-server || still+=("redis-server")
have node || still+=("node")
[[ -x /usr/bin/chromium ]] || still+=("/usr/bin/chromium")
have systemd-analyze || still+=("systemd-analyze")
have nginx || still+=("nginx")
if ((${#still[@]})); then
    echo "ensure-services: still missing after apt-get install: ${still[*]}" >&2
    exit 1
fi
