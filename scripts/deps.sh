#!/usr/bin/env bash
# Install the Debian tools the test suite talks to, when they are missing:
# sipp (package sip-tester), sipsak and sipvicious (svmap/svwar/svcrack).
set -eu
need=()
command -v sipp   >/dev/null 2>&1 || need+=(sip-tester)
command -v sipsak >/dev/null 2>&1 || need+=(sipsak)
command -v svmap  >/dev/null 2>&1 || command -v sipvicious_svmap >/dev/null 2>&1 || need+=(sipvicious)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "deps: installed ${need[*]}"
