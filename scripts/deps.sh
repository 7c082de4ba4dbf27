#!/usr/bin/env bash
# Install the Debian tools the test suite talks to, when they are missing:
# sipp (package sip-tester), sipsak, sipvicious (svmap/svwar/svcrack) and
# kamailio (its stock /etc/kamailio/kamailio.cfg is what
# tests/integration/test_stock_cfg.py runs under ser).
#
# The kamailio package must not leave a Kamailio daemon running (it would
# hold port 5060): its SysV script does not start unless RUN_KAMAILIO=yes, but
# on a systemd machine the postinst starts kamailio.service. A policy-rc.d that
# denies every start is put in place for the install (unless one is there
# already), and the service is stopped and disabled afterwards.
set -eu
need=()
command -v sipp   >/dev/null 2>&1 || need+=(sip-tester)
command -v sipsak >/dev/null 2>&1 || need+=(sipsak)
command -v svmap  >/dev/null 2>&1 || command -v sipvicious_svmap >/dev/null 2>&1 || need+=(sipvicious)
[ -f /etc/kamailio/kamailio.cfg ] || need+=(kamailio)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/deps.sh: no service starts while it installs packages\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
trap '[ -n "$own_policy" ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
if [ -f /etc/kamailio/kamailio.cfg ]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now kamailio.service >/dev/null 2>&1 || true
    fi
    if [ -x /etc/init.d/kamailio ]; then
        /etc/init.d/kamailio stop >/dev/null 2>&1 || true
    fi
fi
echo "deps: installed ${need[*]}"
