#!/usr/bin/env bash
# Time to answer a misbehaving guest's request, one request at a time,
# release build, default limits (budgets and breaker out of the way, so
# that every bad request reaches the guest): for each misbehaviour of
# guests/hostile, five requests to /bad (expected 500) and one to /good
# (expected 200).
# Loopback only; every request is bounded by curl's --max-time.
#
#   bash bench/hostile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p host --bin host --example bench_upstream

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
conf() {
    printf -- '---\nversion: 1\nthreads: 1\npid_file: %s/%s.pid\nupgrade_sock: %s/%s.sock\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 0\n' \
        "$work" "$1" "$work" "$1" > "$work/$1.yaml"
    echo "$work/$1.yaml"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 200); do curl -s -o /dev/null --max-time 1 "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; exit 1; }

upstream_port=$(free_port)
./target/release/examples/bench_upstream -l "127.0.0.1:$upstream_port" -c "$(conf upstream)" >/dev/null 2>&1 &
wait_up "127.0.0.1:$upstream_port/"

for spec in loop:upstream_peer loop:upstream_request_filter alloc:upstream_peer panic:upstream_peer \
    unreachable:upstream_peer recursion:upstream_peer oob_output:upstream_peer huge_output:upstream_peer \
    invalid_json:upstream_peer invalid_utf8:upstream_peer bad_peer:upstream_peer bad_header:upstream_request_filter; do
    misbehave=${spec%%:*} hook=${spec##*:}
    port=$(free_port)
    RUST_LOG=error ./target/release/host guests/hostile.wasm -l "127.0.0.1:$port" -c "$(conf proxy)" --no-module-cache \
        --breaker-faults 0 --cpu-ms-per-s 64000 \
        --module-config "{\"upstream\":\"127.0.0.1:$upstream_port\",\"misbehave\":\"$misbehave\",\"hook\":\"$hook\",\"on_path\":\"/bad\"}" \
        >/dev/null 2>&1 &
    proxy=$!
    wait_up "127.0.0.1:$port/good"
    times=""
    for _ in 1 2 3 4 5; do
        times="$times $(curl -s -o /dev/null --max-time 5 -w '%{http_code}:%{time_total}s' "127.0.0.1:$port/bad")"
    done
    good=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "127.0.0.1:$port/good")
    echo "$misbehave in $hook:$times | next good request: $good"
    kill "$proxy"; wait "$proxy" 2>/dev/null || true
done
