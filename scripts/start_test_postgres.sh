#!/usr/bin/env bash
# A throwaway PostgreSQL server for the store tests: initdb into a temp dir as a non-root user, trust auth,
# listening on 127.0.0.1 only, on a free port, with durability off (the data is disposable).
# Prints ONE line on stdout, for eval:   export REWARDGATE_TEST_POSTGRES_URL=postgresql://...
# Idempotent: a second call finds the running server and prints the same line. `--stop` stops it and removes it.
# Needs Debian's `postgresql` package (apt-get install -y postgresql). REWARDGATE_PG_DIR moves the cluster.
set -euo pipefail

dir="${REWARDGATE_PG_DIR:-${TMPDIR:-/tmp}/rewardgate-test-pg}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
cd "$dir"  # the server's user may not be allowed into the caller's directory
db=rewardgate_test
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [[ -z "$bin" ]] && command -v pg_ctl >/dev/null; then
    bin="$(dirname "$(command -v pg_ctl)")"
fi
[[ -n "$bin" && -x "$bin/pg_ctl" ]] || { echo "no PostgreSQL server binaries: apt-get install -y postgresql" >&2; exit 1; }

# PostgreSQL refuses to run as root: as root, run it as the package's `postgres` user.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

running() { [[ -f "$dir/port" ]] && as_owner "$bin/pg_ctl" status -D "$dir/data" >/dev/null 2>&1; }

if [[ "${1:-}" == "--stop" ]]; then
    if running; then as_owner "$bin/pg_ctl" stop -D "$dir/data" -m fast -w >/dev/null; fi
    rm -rf "$dir"
    exit 0
fi

if ! running; then
    [[ "$(id -u)" == 0 ]] && chown postgres: "$dir"
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        rm -rf "$dir/data"
        as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
            >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    # fsync/full_page_writes/synchronous_commit off: a crash loses this throwaway data, never a test's time.
    as_owner "$bin/pg_ctl" start -D "$dir/data" -w -t 60 -l "$dir/server.log" -o "-p $port -k $dir \
        -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c full_page_writes=off \
        -c synchronous_commit=off" >/dev/null || { tail -n 20 "$dir/server.log" >&2; exit 1; }
    echo "$port" >"$dir/port"
fi

port="$(cat "$dir/port")"
if ! as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
fi
echo "export REWARDGATE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$port/$db"
