#!/usr/bin/env python3
"""End-to-end benchmark: one table comparing, on this machine and in one run,

- the bench upstream alone (no proxy),
- native Pingora (the tutorial's MyProxy compiled in, host/examples/native_proxy.rs),
- this proxy with guests/first_proxy.wasm, instances reused (the default),
- this proxy with a fresh instance for every hook call (--instance-reuse 1),
- nginx as a reverse proxy, when nginx is installed,

all under the same wrk load against the same local upstream, with the same
Pingora conf. Also: idle RSS of the proxy with one module, and time from
start to first response with a cold and a warm compiled-module cache.

The targets are measured in interleaved rounds (every target once per
round, in turn), so that a drift of the machine's speed during the run
touches them all alike; each ratio against native is the median of the
per-round ratios.

Loopback only; every load is bounded by --duration.

    python3 bench/run.py [--rounds 5] [--duration 4] [--connections 32] [--threads 1]
"""

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ok(port, timeout=60.0, host=None, headers=()):
    """Waits until GET / on port (with Host: host, if given, and the other
    headers given as "Name: value") answers 200; returns seconds waited."""
    started = time.monotonic()
    sent = dict(header.split(": ", 1) for header in headers)
    if host:
        sent["Host"] = host
    while time.monotonic() - started < timeout:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/", headers=sent)
            if conn.getresponse().status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.005)
    raise SystemExit(f"nothing answered 200 on port {port} within {timeout}s")


class Processes:
    """Children started by the benchmark; all are stopped on exit."""

    def __init__(self):
        self.children = []

    def start(self, argv, **kwargs):
        # Own process group: nginx's workers are stopped with their master.
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True, **kwargs)
        self.children.append(child)
        return child

    def pause(self, child):
        os.killpg(child.pid, signal.SIGSTOP)

    def resume(self, child):
        os.killpg(child.pid, signal.SIGCONT)

    def stop(self, child):
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
        self.children.remove(child)

    def stop_all(self):
        for child in list(self.children):
            self.stop(child)


def pingora_conf(workdir, name, threads):
    conf = workdir / f"{name}.yaml"
    conf.write_text(
        "---\nversion: 1\n"
        f"threads: {threads}\n"
        f"pid_file: {workdir}/{name}.pid\n"
        f"upgrade_sock: {workdir}/{name}.sock\n"
        "grace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 0\n"
    )
    return conf


def nginx_conf(workdir, port, upstream_port, threads):
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes {threads};
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir};
    proxy_temp_path {workdir};
    fastcgi_temp_path {workdir};
    uwsgi_temp_path {workdir};
    scgi_temp_path {workdir};
    upstream origin {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host one.one.one.one;
        }}
    }}
}}
""")
    return conf


def header_args(headers):
    return [arg for header in headers for arg in ("-H", header)]


def warm_up(port, args):
    url = f"http://127.0.0.1:{port}/"
    warm = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", "2s", url,
            *header_args(getattr(args, "headers", ()))]
    subprocess.run(warm, check=True, capture_output=True, timeout=60)


def wrk(port, args):
    """Runs wrk against port; returns (requests/s, p50 ms, p99 ms, non-2xx, socket errors)."""
    return run_wrk(port, args.threads, args.connections, args.duration,
                   headers=getattr(args, "headers", ()))


def run_wrk(port, threads, connections, duration, host=None, headers=()):
    """wrk against port (with Host: host, if given, and the other request
    headers given as "Name: value"); returns (requests/s, p50 ms, p99 ms,
    non-2xx, socket errors)."""
    url = f"http://127.0.0.1:{port}/"
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency", url]
    if host:
        cmd += ["-H", f"Host: {host}"]
    cmd += header_args(headers)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def percentile(p):
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return (rps, percentile(50), percentile(99), int(errors.group(1)) if errors else 0,
            socket_errors.group(1) if socket_errors else None)


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def prepare(no_build):
    """Checks for wrk and, unless no_build, builds the release binaries."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    if not no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "host", "--bin", "host", "--examples"],
                       cwd=ROOT, check=True)


def cpu_model():
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown CPU")


def rss_mib(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=int, default=4,
                        help="seconds of load per target and round (default 4)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads and Pingora threads (default 1)")
    parser.add_argument("--no-build", action="store_true", help="use the existing release build")
    parser.add_argument("--policy", action="store_true",
                        help="measure guests/policy (every lifecycle hook) against the same policy "
                             "compiled in (host/examples/native_policy) instead of first_proxy")
    parser.add_argument("--proxy-wasm", action="store_true",
                        help="measure a proxy-wasm filter (guests/pw_bench: reads :path, adds a "
                             "request and a response header) in front of a static upstream, against "
                             "the same work compiled in (host/examples/native_filter), beside first_proxy")
    args = parser.parse_args()
    # The policy refuses requests without a key; the benchmark's all have one.
    args.headers = ["x-api-key: gold-1"] if args.policy else []
    prepare(args.no_build)

    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="wasm-pingora-bench-"))
    try:
        upstream_port = free_port()
        procs.start([RELEASE / "examples" / "bench_upstream", "--listen", f"127.0.0.1:{upstream_port}",
                     "-c", pingora_conf(workdir, "upstream", args.threads)])
        wait_ok(upstream_port)
        module_config = f'{{"upstream": "127.0.0.1:{upstream_port}", "tls": false}}'

        guest = "policy.wasm" if args.policy else "first_proxy.wasm"
        if args.policy:
            module_config = f'{{"upstream": "127.0.0.1:{upstream_port}"}}'

        def host(name, *extra, guests=None):
            guests = guests or [ROOT / "guests" / guest, "--module-config", module_config]

            def start(port):
                # The tenant budget is out of reach: this measures the
                # proxy's cost, and a fresh instance per call spends ~20 us
                # of guest time instantiating, past the default 100 ms/s at
                # these rates.
                return procs.start([RELEASE / "host", *guests,
                                    "--listen", f"127.0.0.1:{port}",
                                    "--module-cache", workdir / "module-cache", "--cpu-ms-per-s", "64000",
                                    "-c", pingora_conf(workdir, name, args.threads), *extra],
                                   env={**os.environ, "RUST_LOG": "warn"})
            return start

        native, native_label, guest_label = (
            ("native_policy", "the policy compiled in", "policy") if args.policy
            else ("native_filter", "the filter's work compiled in", "first_proxy") if args.proxy_wasm
            else ("native_proxy", "MyProxy compiled in", "first_proxy"))
        targets = [
            ("upstream alone (no proxy)", None),
            (f"native Pingora ({native_label})",
             lambda port: procs.start([RELEASE / "examples" / native,
                                       "--upstream", f"127.0.0.1:{upstream_port}",
                                       "--listen", f"127.0.0.1:{port}",
                                       "-c", pingora_conf(workdir, "native", args.threads)])),
            (f"wasm {guest_label}, instances reused (default)", host("wasm-reuse")),
        ]
        if args.proxy_wasm:
            targets.append(("wasm proxy-wasm filter pw_bench, static upstream",
                            host("wasm-filter", guests=["--filter", ROOT / "guests" / "pw_bench.wasm",
                                                        "--upstream", f"127.0.0.1:{upstream_port}"])))
        elif not args.policy:
            targets.append(("wasm first_proxy, fresh instance per call",
                            host("wasm-fresh", "--instance-reuse", "1")))
        if shutil.which("nginx") and not args.policy and not args.proxy_wasm:
            targets.append(("nginx reverse proxy", lambda port: procs.start(
                ["nginx", "-c", nginx_conf(workdir, port, upstream_port, args.threads),
                 "-p", workdir, "-g", "daemon off;"])))

        # Every target is started once and paused (SIGSTOP) while the
        # others are measured, so that not even its timers compete.
        ports, children = {}, {}
        idle_rss = None
        for name, start in targets:
            if start is None:
                ports[name] = upstream_port
                continue
            port = free_port()
            child = start(port)
            wait_ok(port, headers=args.headers)
            if name.startswith("wasm") and idle_rss is None:
                idle_rss = rss_mib(child.pid)
            warm_up(port, args)
            procs.pause(child)
            ports[name], children[name] = port, child

        runs = {name: [] for name, _ in targets}
        for round_number in range(1, args.rounds + 1):
            for name, _ in targets:
                print(f"round {round_number}/{args.rounds}: {name} ...", file=sys.stderr)
                child = children.get(name)
                if child:
                    procs.resume(child)
                runs[name].append(wrk(ports[name], args))
                if child:
                    procs.pause(child)
        for child in children.values():
            procs.stop(child)

        # Start to first response, cold and warm compiled-module cache.
        startup = []
        cache = workdir / "startup-cache"
        for label in () if args.policy or args.proxy_wasm else ("cold cache", "warm cache"):
            port = free_port()
            started = time.monotonic()
            child = procs.start([RELEASE / "host", ROOT / "guests" / "first_proxy.wasm",
                                 "--listen", f"127.0.0.1:{port}", "--module-config", module_config,
                                 "--module-cache", cache, "-c", pingora_conf(workdir, "startup", 1)])
            wait_ok(port)
            startup.append((label, (time.monotonic() - started) * 1e3))
            procs.stop(child)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    native_name = next(name for name in runs if name.startswith("native"))
    native = runs[native_name]
    print(f"\nMachine: {os.cpu_count()} cores, {cpu_model()}. wrk -t{args.threads} -c{args.connections} "
          f"-d{args.duration}s x {args.rounds} interleaved rounds, Pingora threads: {args.threads}, "
          "keep-alive, loopback.\n")
    print("Medians over the rounds; 'vs native' is the median of the per-round ratios "
          "(its range in brackets).\n")
    print("| target | req/s | p50 | p99 | vs native | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, results in runs.items():
        ratios = [run[0] / base[0] for run, base in zip(results, native)]
        errors = sum(run[3] for run in results)
        socket_errors = [run[4] for run in results if run[4]]
        print(f"| {name} | {median(r[0] for r in results):,.0f} | {median(r[1] for r in results):.2f} ms "
              f"| {median(r[2] for r in results):.2f} ms | {median(ratios):.1%} "
              f"({min(ratios):.1%}-{max(ratios):.1%}) | {errors}"
              + (f" (socket errors: {'; '.join(socket_errors)})" if socket_errors else "") + " |")
    print(f"\nIdle RSS, proxy with one module: {idle_rss:.1f} MiB")
    for label, ms in startup:
        print(f"Start to first response, {label}: {ms:.0f} ms")


if __name__ == "__main__":
    main()
