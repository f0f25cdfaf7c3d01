#!/usr/bin/env python3
"""Noisy neighbours: a good tenant under steady wrk load, its req/s, p50
and p99, measured

  (a) alone;
  (b) beside a tenant whose guest loops, hit at a fixed rate (--rate, default
      200 req/s) and, separately, by 64 connections as fast as answered;
  (c) the same with a memory-bomb guest (grows memory until its cap);
  (d) the same with a slow but legal guest: about 2 ms of work per call,
      under its deadline (calibrated on this machine at start);
  (e) for reference, beside an honest neighbour (first_proxy) hit the same
      ways: what sharing the proxy costs when no module misbehaves. A
      flood of 64 connections takes proxy time whatever its module does.

One proxy serves all four tenants from one tenants file with default
limits and budgets (what a platform gets without tuning); a fresh proxy is
started for every measurement, so no breaker or bucket state carries over.
Scenarios are interleaved over --rounds rounds and each figure is the
median over the rounds. Give --baseline BINARY (an earlier build of the
host) to measure it in the same run, interleaved too: the 'before' column.

Loopback only; every load is bounded by --duration.

    python3 bench/neighbours.py [--rounds 3] [--duration 5] [--baseline path/to/old/host]
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (Processes, cpu_model, free_port, median, pingora_conf, prepare,  # noqa: E402
                 run_wrk, wait_ok)

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
GUESTS = ROOT / "guests"

#: Pingora worker threads of the proxy, and the good tenant's wrk load: as
#: in the issue's measurement.
PROXY_THREADS = 2
GOOD_CONNECTIONS = 8


def tenants_yaml(upstream_port, spin_iterations):
    upstream = f"127.0.0.1:{upstream_port}"
    return f"""
tenants:
  - name: good
    hosts: ["good.example"]
    module: {GUESTS}/first_proxy.wasm
    config: {{ upstream: "{upstream}", tls: false }}
  - name: loop
    hosts: ["loop.example"]
    module: {GUESTS}/hostile.wasm
    config: {{ upstream: "{upstream}", misbehave: "loop" }}
  - name: bomb
    hosts: ["bomb.example"]
    module: {GUESTS}/hostile.wasm
    config: {{ upstream: "{upstream}", misbehave: "alloc" }}
  - name: slow
    hosts: ["slow.example"]
    module: {GUESTS}/hostile.wasm
    config: {{ upstream: "{upstream}", misbehave: "spin", spin_iterations: {spin_iterations} }}
  - name: honest
    hosts: ["honest.example"]
    module: {GUESTS}/first_proxy.wasm
    config: {{ upstream: "{upstream}", tls: false }}
"""


def wrk(port, host, connections, duration):
    """wrk against port with Host: host; (req/s, p50 ms, p99 ms, non-2xx)."""
    result = run_wrk(port, 1, connections, duration, host)
    return result["rps"], result["p50"], result["p99"], result["non2xx"]


class FixedRate(threading.Thread):
    """Sends GET / with Host: host at `rate` requests per second, each on
    its own connection, from a pool of sender threads; counts the statuses.
    Stops after `duration` seconds."""

    def __init__(self, port, host, rate, duration, senders=32):
        super().__init__(daemon=True)
        self.port, self.host, self.rate, self.duration = port, host, rate, duration
        self.senders = senders
        self.statuses = {}
        self.lock = threading.Lock()

    def send_one(self):
        status = "error"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
                conn.sendall(f"GET / HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode())
                head = conn.recv(64)
                status = head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "error"
                while conn.recv(65536):
                    pass
        except OSError:
            pass
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def run(self):
        interval = 1.0 / self.rate
        deadline = time.monotonic() + self.duration
        next_at = time.monotonic()
        tickets = threading.Semaphore(0)
        stop = threading.Event()

        def sender():
            while True:
                tickets.acquire()
                if stop.is_set():
                    return
                self.send_one()

        pool = [threading.Thread(target=sender, daemon=True) for _ in range(self.senders)]
        for thread in pool:
            thread.start()
        while time.monotonic() < deadline:
            tickets.release()
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        stop.set()
        for _ in pool:
            tickets.release()
        for thread in pool:
            thread.join(timeout=10)


def hook_seconds(metrics_port, tenant):
    """Mean upstream_peer duration of `tenant` from the metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    labels = rf'\{{hook="upstream_peer",tenant="{tenant}"\}}'
    total = float(re.search(rf"wasm_proxy_hook_duration_seconds_sum{labels} (\S+)", text).group(1))
    count = float(re.search(rf"wasm_proxy_hook_duration_seconds_count{labels} (\S+)", text).group(1))
    return total / count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds of load per measurement (default 5)")
    parser.add_argument("--rate", type=int, default=200, help="fixed rate of the hostile client (default 200/s)")
    parser.add_argument("--baseline", type=Path, help="an earlier host binary, measured in the same run")
    parser.add_argument("--no-build", action="store_true", help="use the existing release build")
    args = parser.parse_args()
    prepare(args.no_build)

    binaries = [("after", RELEASE / "host")]
    if args.baseline:
        binaries.insert(0, ("before", args.baseline))
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="wasm-pingora-neighbours-"))
    try:
        upstream_port = free_port()
        procs.start([RELEASE / "examples" / "bench_upstream", "--listen", f"127.0.0.1:{upstream_port}",
                     "-c", pingora_conf(workdir, "upstream", 1)])
        wait_ok(upstream_port)

        def start_proxy(binary, spin_iterations):
            tenants = workdir / "tenants.yaml"
            tenants.write_text(tenants_yaml(upstream_port, spin_iterations))
            port, metrics_port = free_port(), free_port()
            child = procs.start([binary, "--tenants", tenants, "--listen", f"127.0.0.1:{port}",
                                 "--metrics", f"127.0.0.1:{metrics_port}",
                                 "--module-cache", workdir / "module-cache",
                                 "-c", pingora_conf(workdir, "proxy", PROXY_THREADS)],
                                env={**os.environ, "RUST_LOG": "error"})
            wait_ok(port, host="good.example")
            return child, port, metrics_port

        # Calibrate the slow guest to about 2 ms per call on this machine.
        probe_iterations = 1_000_000
        child, port, metrics_port = start_proxy(RELEASE / "host", probe_iterations)
        for _ in range(20):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": "slow.example"})
            urllib.request.urlopen(req, timeout=5).read()
        per_call = hook_seconds(metrics_port, "slow")
        procs.stop(child)
        spin_iterations = int(probe_iterations * 0.002 / per_call)
        print(f"slow guest: {probe_iterations} rounds took {per_call * 1e3:.2f} ms; "
              f"using {spin_iterations} for 2 ms", file=sys.stderr)

        scenarios = [("(a) alone", None, None)]
        for label, host in (("(b) loop", "loop.example"), ("(c) memory bomb", "bomb.example"),
                            ("(d) slow 2 ms", "slow.example"), ("(e) honest", "honest.example")):
            scenarios.append((f"{label}, {args.rate}/s", host, "rate"))
            scenarios.append((f"{label}, 64 conns", host, "flood"))

        results = {(b, s[0]): [] for b, _ in binaries for s in scenarios}
        hostile = {(b, s[0]): [] for b, _ in binaries for s in scenarios}
        for round_number in range(1, args.rounds + 1):
            for name, _, mode in scenarios:
                for binary_name, binary in binaries:
                    print(f"round {round_number}/{args.rounds}: {binary_name} {name} ...", file=sys.stderr)
                    child, port, _ = start_proxy(binary, spin_iterations)
                    wrk(port, "good.example", GOOD_CONNECTIONS, 1)  # warm-up
                    noise = None
                    host = next(h for n, h, _ in scenarios if n == name)
                    if mode == "rate":
                        noise = FixedRate(port, host, args.rate, args.duration + 1)
                        noise.start()
                    elif mode == "flood":
                        noise = subprocess.Popen(
                            ["wrk", "-t", "1", "-c", "64", "-d", f"{args.duration + 1}s",
                             "-H", f"Host: {host}", f"http://127.0.0.1:{port}/"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                    if noise is not None:
                        time.sleep(0.5)
                    results[(binary_name, name)].append(wrk(port, "good.example", GOOD_CONNECTIONS, args.duration))
                    if mode == "rate":
                        noise.join(timeout=30)
                        hostile[(binary_name, name)].append(dict(noise.statuses))
                    elif mode == "flood":
                        out, _ = noise.communicate(timeout=60)
                        answered = re.search(r"(\d+) requests in", out)
                        hostile[(binary_name, name)].append({"answered": int(answered.group(1)) if answered else 0})
                    procs.stop(child)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    clock = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource").read_text().strip()
    print(f"\nMachine: {os.cpu_count()} cores, {cpu_model()}, clock source {clock}. Proxy: {PROXY_THREADS} "
          f"Pingora threads, default limits and budgets. Good tenant: wrk -t1 -c{GOOD_CONNECTIONS} "
          f"-d{args.duration}s, keep-alive, loopback. Medians of {args.rounds} interleaved rounds.\n")
    header = "| scenario |"
    rule = "|---|"
    for binary_name, _ in binaries:
        header += f" {binary_name}: req/s | p50 | p99 | vs (a) |"
        rule += "---:|---:|---:|---:|"
    for binary_name, _ in binaries:
        header += f" neighbour's answers, {binary_name} |"
        rule += "---|"
    print(header)
    print(rule)
    for name, _, _ in scenarios:
        row = f"| {name} |"
        for binary_name, _ in binaries:
            runs = results[(binary_name, name)]
            alone = results[(binary_name, scenarios[0][0])]
            ratios = [run[0] / base[0] for run, base in zip(runs, alone)]
            errors = sum(run[3] for run in runs)
            row += (f" {median(r[0] for r in runs):,.0f} | {median(r[1] for r in runs):.2f} ms | "
                    f"{median(r[2] for r in runs):.2f} ms | {median(ratios):.1%}"
                    + (f", {errors} non-2xx" if errors else "") + " |")
        for binary_name, _ in binaries:
            merged = {}
            for counts in hostile[(binary_name, name)]:
                for key, value in counts.items():
                    merged[key] = merged.get(key, 0) + value
            row += " " + (", ".join(f"{k}: {v}" for k, v in sorted(merged.items())) or "-") + " |"
        print(row)
    print("\nNeighbour's answers: by status for the fixed rate, in total for the flood "
          "(wrk counts every answer), over all rounds.")


if __name__ == "__main__":
    main()
