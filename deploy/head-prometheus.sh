#!/usr/bin/env bash
# Prometheus on a cluster's head node, run by the cluster files' head_start_ray_commands after `ray start --head`.
#
# Exactly one runs per head: a previous one (an earlier `ray up`) is stopped first, by the process group this
# script recorded, never by a name pattern. It stops by itself when Ray stops on this host (`ray down`, or the
# `ray stop` of the next `ray up`), so nothing is left on port 9090. Without a `prometheus` command it says so and
# does nothing (the driver's own endpoint, :8000/metrics, still serves every metric).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CONFIG=$HERE/prometheus.yml
STATE=${GCRL_PROMETHEUS_DIR:-/tmp/gcrl-prometheus}           # its pid file, log and time series
RAY_RECORD=${RAY_TMPDIR:-/tmp}/ray/ray_current_cluster      # written by `ray start`, removed by `ray stop`
LISTEN=${GCRL_PROMETHEUS_LISTEN:-0.0.0.0:9090}               # Prometheus's own web address

stop_previous() {
    local group
    group=$(cat "$STATE/group" 2>/dev/null) || return 0
    kill -- "-$group" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 -- "-$group" 2>/dev/null || break; sleep 0.1; done
    rm -f "$STATE/group"
}

watch_ray() {
    # Runs as its own process group: Prometheus, then a poll that ends both when Ray stops here.
    prometheus --config.file="$CONFIG" --storage.tsdb.path="$STATE/data" \
        --web.listen-address="$LISTEN" >"$STATE/prometheus.log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null && [ -e "$RAY_RECORD" ]; do sleep 2; done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$STATE/group"
}

main() {
    if ! command -v prometheus >/dev/null; then
        echo "head-prometheus: no prometheus command on this host; metrics stay at the driver's :8000/metrics"
        return 0
    fi
    [ -e "$RAY_RECORD" ] || { echo "head-prometheus: Ray is not running here ($RAY_RECORD missing)" >&2; return 1; }
    mkdir -p "$STATE"
    stop_previous
    export -f watch_ray
    export CONFIG STATE RAY_RECORD LISTEN
    setsid nohup bash -c watch_ray >/dev/null 2>&1 </dev/null &
    echo $! >"$STATE/group"
    echo "head-prometheus: Prometheus on $LISTEN (process group $(cat "$STATE/group")), scraping per $CONFIG"
}

main "$@"
