#!/usr/bin/env bash
# A throwaway Prometheus for tests/deploy/test_prometheus.py: Debian's `prometheus` package, a temp data dir, 127.0.0.1
# on a free port, the lifecycle API on. It starts with an empty scrape config; the test writes
# deploy/prometheus/prometheus.yml there with its processes' ports and asks for a reload (POST /-/reload).
# Prints ONE line on stdout, for eval:
#   export REWARDGATE_TEST_PROMETHEUS_URL=http://127.0.0.1:PORT REWARDGATE_TEST_PROMETHEUS_CONFIG=DIR/prometheus.yml
# Idempotent: a second call finds the running server and prints the same line. `--stop` stops it and removes it.
# Needs `prometheus` (apt-get install -y prometheus). REWARDGATE_PROM_DIR moves it.
set -euo pipefail

dir="${REWARDGATE_PROM_DIR:-${TMPDIR:-/tmp}/rewardgate-test-prometheus}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

running() { [[ -f "$dir/pid" ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }

if [[ "${1:-}" == "--stop" ]]; then
    if running; then
        pid="$(cat "$dir/pid")"
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$dir"
    exit 0
fi

command -v prometheus >/dev/null || { echo "no prometheus: apt-get install -y prometheus" >&2; exit 1; }

if ! running; then
    rm -rf "$dir/data"
    printf 'global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n' >"$dir/prometheus.yml"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    nohup prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
        --storage.tsdb.retention.time=2h --web.listen-address="127.0.0.1:$port" --web.enable-lifecycle \
        >"$dir/server.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    echo "$port" >"$dir/port"
    # Ready within 30 s, or say why not (the log's tail).
    for _ in $(seq 300); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/-/ready', timeout=1)" \
                2>/dev/null; then
            break
        fi
        running || { tail -n 20 "$dir/server.log" >&2; exit 1; }
        sleep 0.1
    done
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/-/ready', timeout=1)" \
        || { tail -n 20 "$dir/server.log" >&2; exit 1; }
fi

echo "export REWARDGATE_TEST_PROMETHEUS_URL=http://127.0.0.1:$(cat "$dir/port")" \
    "REWARDGATE_TEST_PROMETHEUS_CONFIG=$dir/prometheus.yml"
