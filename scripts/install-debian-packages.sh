#!/usr/bin/env bash
# Installs the Debian packages Kubernaut's local stack and tests run, on a fresh machine or a warm
# one (idempotent: a package already installed is left alone):
#   - prometheus (2.42 on bookworm): /usr/bin/prometheus, /usr/bin/promtool
#   - prometheus-alertmanager (0.25 on bookworm): /usr/bin/prometheus-alertmanager, /usr/bin/amtool
#   - redis-server (7.0 on bookworm): /usr/bin/redis-server (and redis-cli from redis-tools), for
#     the gateway's Redis intake backend and its tests
#   - buildah (1.28 on bookworm) and mmdebstrap (1.3 on bookworm): `make image`
#     (scripts/build-image.sh) builds the container image with buildah, on a Debian base that
#     mmdebstrap makes when no container registry is reachable
#   - podman (4.3 on bookworm) and runc (1.1 on bookworm): tests/integration/test_image.py runs the
#     image with `podman run --runtime runc` (bookworm's crun 1.8 refuses hybrid cgroups);
#     podman ships systemd units (podman.socket, podman.service, podman-restart.service,
#     podman-auto-update.timer and .service) that its postinst enables: they are stopped and
#     disabled below like the daemons (nothing of Kubernaut's uses them)
#   - chromium and chromium-driver (156 from bookworm-security): the web console's browser test
#     (tests/e2e/test_console_browser.py) drives headless Chromium through /usr/bin/chromedriver
#     with Selenium; no browser is downloaded
#
# We run our own instances on loopback (kubernaut/devstack/monitoring.py, tests/fixtures/redis.py),
# so the packages' own daemons must not run and must not start at boot. The packages' postinst does
# `update-rc.d NAME defaults` + `invoke-rc.d NAME start` (sysvinit) and
# `deb-systemd-helper enable` + `deb-systemd-invoke start` (only when systemd is PID 1).
# This script:
#   1. denies those starts during the install with a temporary /usr/sbin/policy-rc.d (only when
#      the machine has none; Debian container images ship one that always answers 101),
#   2. afterwards stops any packaged daemon that is running anyway (by the pid in its pidfile,
#      via its init script, or with systemctl when systemd runs), and
#   3. disables the boot-time start (systemctl disable, which works without systemd running and
#      also runs update-rc.d disable; update-rc.d disable itself where systemctl is missing).
# Recommends are not installed (they would bring prometheus-node-exporter and its daemon).
set -euo pipefail

PACKAGES=(prometheus prometheus-alertmanager redis-server)
# Tools without a daemon: installed like the others, left out of the daemon handling below.
TOOL_PACKAGES=(buildah mmdebstrap podman runc chromium chromium-driver)
# Units that tool packages enable and nothing here uses.
TOOL_UNITS=(podman.socket podman.service podman-restart.service podman-auto-update.timer
  podman-auto-update.service)
# The packaged services, each with the pidfile its /etc/init.d script writes (redis-server's is
# the `pidfile` of /etc/redis/redis.conf).
declare -A PIDFILES=(
  [prometheus]=/run/prometheus/prometheus.pid
  [prometheus-alertmanager]=/run/prometheus/prometheus-alertmanager.pid
  [redis-server]=/run/redis/redis-server.pid
)

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "install-debian-packages: must run as root (apt-get install)" >&2
  exit 1
fi

installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

missing=()
for pkg in "${PACKAGES[@]}" "${TOOL_PACKAGES[@]}"; do
  if installed "$pkg"; then
    note "$pkg $(dpkg-query -W -f='${Version}' "$pkg") already installed"
  else
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  policy=/usr/sbin/policy-rc.d
  temporary_policy=false
  if [ ! -e "$policy" ]; then
    step "temporary $policy: deny service starts while installing"
    printf '#!/bin/sh\n# Written by kubernaut scripts/install-debian-packages.sh; removed when it ends.\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    temporary_policy=true
    trap 'rm -f "$policy"' EXIT
  else
    note "$policy exists already; left as it is"
  fi
  step "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  step "apt-get install --no-install-recommends ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}"
  if "$temporary_policy"; then
    rm -f "$policy"
    trap - EXIT
    note "removed temporary $policy"
  fi
fi

# Whatever the install did (or an earlier one, or a boot), leave no packaged daemon running or
# enabled. Safe to repeat.
systemd_running=false
[ -d /run/systemd/system ] && systemd_running=true
for svc in "${PACKAGES[@]}"; do
  pidfile=${PIDFILES[$svc]}
  # The binary the daemon runs as: /usr/bin/redis-server is a symlink (to redis-check-rdb), and
  # /proc/PID/exe names the file it resolves to.
  binary=$(readlink -f "/usr/bin/$svc")
  if "$systemd_running" && systemctl is-active --quiet "$svc.service"; then
    step "stopping the packaged $svc.service (systemctl)"
    systemctl stop "$svc.service"
  fi
  if [ -s "$pidfile" ]; then
    pid=$(cat "$pidfile")
    # Only a pid that is really this package's binary (a stale pidfile's pid may be reused).
    if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" = "$binary" ]; then
      step "stopping the packaged $svc daemon (pid $pid from $pidfile)"
      # The init script's stop is start-stop-daemon --pidfile (TERM, then KILL after 30s).
      # `service` runs it directly: invoke-rc.d would ask policy-rc.d, which may deny it.
      if ! service "$svc" stop; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
          kill -0 "$pid" 2>/dev/null || break
          sleep 0.1
        done
        if [ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" = "$binary" ]; then
          kill -KILL "$pid" 2>/dev/null || true
        fi
      fi
    fi
  fi
  # systemctl enable/disable edit unit symlinks, so they work whether or not systemd runs; on
  # Debian, disable also runs `update-rc.d NAME disable` for the init script.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet "$svc.service" 2>/dev/null; then
    step "disabling $svc.service (systemctl disable)"
    systemctl disable --quiet "$svc.service" 2>&1 | sed 's/^/    /'
  fi
  if [ -x "/etc/init.d/$svc" ] && ls /etc/rc[2-5].d/S*"$svc" >/dev/null 2>&1; then
    step "disabling the $svc init script at boot (update-rc.d disable)"
    update-rc.d "$svc" disable >/dev/null 2>&1
  fi
done

for unit in "${TOOL_UNITS[@]}"; do
  if "$systemd_running" && systemctl is-active --quiet "$unit"; then
    step "stopping $unit (systemctl)"
    systemctl stop "$unit"
  fi
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
    step "disabling $unit (systemctl disable)"
    systemctl disable --quiet "$unit" 2>&1 | sed 's/^/    /'
  fi
done

step "ready: $(/usr/bin/prometheus --version 2>&1 | head -n1)"
step "ready: $(/usr/bin/prometheus-alertmanager --version 2>&1 | head -n1)"
step "ready: $(/usr/bin/redis-server --version 2>&1 | head -n1)"
step "ready: $(/usr/bin/buildah --version 2>&1 | head -n1)"
step "ready: mmdebstrap $(dpkg-query -W -f='${Version}' mmdebstrap)"
step "ready: $(/usr/bin/podman --version 2>&1 | head -n1), $(/usr/sbin/runc --version 2>&1 | head -n1)"
