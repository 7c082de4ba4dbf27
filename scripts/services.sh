#!/usr/bin/env bash
# Run a command (the test suite) with PostgreSQL and Redis available:
#   scripts/services.sh CMD [ARGS...]
# Uses the machine's servers when they answer (PostgreSQL on 127.0.0.1:5432
# with trust auth and a database `test`, Redis on 127.0.0.1:6379); otherwise
# installs the Debian packages when missing (as root) and starts private
# instances in a temp dir on free ports, stopped again when CMD ends.
# Exports SER_TEST_PG_URL and SER_TEST_REDIS_URL to CMD.
set -u
tmp=""
pg_data=""
pg_bin=""
redis_pid=""
cleanup() {
    if [ -n "$pg_data" ]; then
        if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1
        else "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1; fi
    fi
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null
    [ -n "$tmp" ] && rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
apt_install() {
    [ "$(id -u)" -eq 0 ] || { echo "services: $* missing; run as root to install" >&2; return 1; }
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_ok() { python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=1); s.close()
PY
}

if [ -z "${SER_TEST_PG_URL:-}" ]; then
    if pg_ok 127.0.0.1:5432; then
        export SER_TEST_PG_URL="postgres://postgres@127.0.0.1:5432/test"
    else
        ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
        pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort | tail -1)")
        tmp=${tmp:-$(mktemp -d /tmp/ser-services.XXXXXX)}
        chmod 755 "$tmp"
        pg_data="$tmp/pg"
        mkdir -p "$pg_data" && [ "$(id -u)" -eq 0 ] && chown postgres "$pg_data" "$tmp"
        port=$(free_port)
        as_pg "$pg_bin/initdb" -D "$pg_data" -A trust -U postgres --no-sync >/dev/null
        as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$tmp/pg.log" -w \
            -o "-p $port -k $tmp -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
        as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U postgres test
        export SER_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/test"
        echo "services: private PostgreSQL at $SER_TEST_PG_URL"
    fi
fi
if [ -z "${SER_TEST_REDIS_URL:-}" ]; then
    if pg_ok 127.0.0.1:6379; then
        export SER_TEST_REDIS_URL="redis://127.0.0.1:6379/0"
    else
        command -v redis-server >/dev/null 2>&1 || apt_install redis-server
        tmp=${tmp:-$(mktemp -d /tmp/ser-services.XXXXXX)}
        port=$(free_port)
        redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
            --dir "$tmp" --logfile "$tmp/redis.log" &
        redis_pid=$!
        export SER_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
        echo "services: private Redis at $SER_TEST_REDIS_URL"
    fi
fi
"$@"
