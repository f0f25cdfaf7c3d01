#!/usr/bin/env python3
"""End-to-end benchmark: one run compares, on this machine,

- native Pingora (the tutorial's MyProxy compiled in, host/examples/native_proxy.rs),
- this proxy with guests/first_proxy.wasm, instances reused (the default),
- this proxy with a fresh instance for every hook call (--instance-reuse 1),
- native Pingora adding X-Forwarded-For/-Proto/-Host in its
  upstream_request_filter (native_proxy --forwarded-headers), and this
  proxy in its default configuration, which adds them too: that pair is
  compared with each other (the rows above run without them),
- nginx as a reverse proxy, when nginx is installed,

in front of the same local upstream, with the same Pingora conf, at 1 and
at 2 Pingora threads (--pingora-threads). At 1 thread the proxy runs
pinned to CPU 0 and wrk and the upstream to CPU 1 (--no-pin turns it
off). Every target is measured in interleaved rounds (each once per
round, in turn, the others paused with SIGSTOP so not even their timers
compete), under two loads:

1. **a fixed offered load** well below saturation: wrk's connections each
   wait --delay-ms between requests;
2. **saturation**: wrk as fast as the proxy answers.

The figure for each is **the proxy's CPU time per request**: user +
system time of every thread of every process in its group (schedstat, in
nanoseconds) over the round, divided by the requests served. It depends
far less on how the VM schedules wrk and the upstream than req/s does
(req/s at saturation is shown beside it). Each ratio against native is
the mean of the per-round ratios with a 95% confidence interval
(Student's t); each load runs rounds until every interval is within
--ci-points (at least --min-rounds, at most --max-rounds).

Also: idle RSS of the proxy with one module, measured one way (start, 100
requests on one connection, 1 s idle, then VmRSS), with a cold and a warm
compiled-module cache; and the time from start to first response.

Loopback only; every load is bounded by --duration and the round counts.

    python3 bench/run.py [--pingora-threads 1 2] [--duration 3] [--max-rounds 30]

`python3 bench/run.py --edge [...]` runs bench/edge.py instead: TLS
handshakes, keep-alive HTTPS and HTTP/2 against native Pingora with the
same TLS settings.
"""

import argparse
import http.client
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"

# Student's t, two-sided 95%, by degrees of freedom (past 30: 1.96).
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
       2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
       2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


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


def get_many(port, count, headers=()):
    """count GETs of / on one keep-alive connection; all must answer 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    sent = dict(header.split(": ", 1) for header in headers)
    for _ in range(count):
        conn.request("GET", "/", headers=sent)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"port {port} answered {response.status}")
    conn.close()


class Processes:
    """Children started by the benchmark; all are stopped on exit."""

    def __init__(self):
        self.children = []

    def start(self, argv, **kwargs):
        # Own process group: nginx's workers are stopped with their master,
        # and a target's CPU time is its group's.
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


TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def group_cpu(pgid):
    """CPU time so far of every thread of every process in process group
    pgid: (user + system in nanoseconds, from schedstat; user and system
    in nanoseconds, from stat's clock ticks, a coarser split)."""
    total = user = system = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            # Field 5 of stat is the process group; the name (field 2) may
            # hold spaces, so count from the closing parenthesis.
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            user += int(fields[11]) * TICK_NS
            system += int(fields[12]) * TICK_NS
            for task in (proc / "task").iterdir():
                total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total, user, system


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


def delay_script(workdir, delay_ms):
    """A wrk script that makes each connection wait delay_ms between requests."""
    script = workdir / f"delay-{delay_ms}.lua"
    script.write_text(f"function delay()\n  return {delay_ms}\nend\n")
    return script


def run_wrk(port, threads, connections, duration, host=None, headers=(), script=None, cpus=None,
            scheme="http"):
    """wrk against port (with Host: host, if given, and the other request
    headers given as "Name: value"); returns a dict with requests, rps,
    p50 and p99 (ms), non2xx and socket_errors."""
    # Over TLS, a name: wrk then sends it as SNI, as clients do.
    url = f"http://127.0.0.1:{port}/" if scheme == "http" else f"{scheme}://localhost:{port}/"
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency"]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    if script:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if host:
        cmd += ["-H", f"Host: {host}"]
    cmd += header_args(headers)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 60).stdout

    def percentile(p):
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": percentile(50),
        "p99": percentile(99),
        "non2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else None,
    }


def median(values):
    return statistics.median(list(values))


def mean_ci(values):
    """Mean and the half-width of its 95% confidence interval."""
    values = list(values)
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.inf
    t = T95[len(values) - 2] if len(values) - 1 <= len(T95) else 1.96
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


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


def clock_source():
    path = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
    return path.read_text().strip() if path.exists() else "unknown"


def machine_line():
    return (f"Machine: {os.cpu_count()} vCPU, {cpu_model()}, clock source {clock_source()}, "
            f"Linux {os.uname().release}.")


def rss_mib(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


class Bench:
    """The targets of one run and how each is started."""

    def __init__(self, args, procs, workdir, upstream_port):
        self.args, self.procs, self.workdir = args, procs, workdir
        self.upstream_port = upstream_port
        if args.policy:
            guest, self.module_config = "policy.wasm", f'{{"upstream": "127.0.0.1:{upstream_port}"}}'
        else:
            guest = "first_proxy.wasm"
            self.module_config = f'{{"upstream": "127.0.0.1:{upstream_port}", "tls": false}}'
        self.guest_args = [ROOT / "guests" / guest, "--module-config", self.module_config]
        self.native, native_label, guest_label = (
            ("native_policy", "the policy compiled in", "policy") if args.policy
            else ("native_filter", "the filter's work compiled in", "first_proxy") if args.proxy_wasm
            else ("native_proxy", "MyProxy compiled in", "first_proxy"))
        self.native_name = f"native Pingora ({native_label})"
        self.targets = [
            (self.native_name, self.start_native),
            (f"wasm {guest_label}, instances reused (default)", self.host("wasm-reuse")),
        ]
        # Each target's baseline, when it is not native: the host's default
        # configuration (X-Forwarded-* on) against native adding the same
        # three headers in upstream_request_filter.
        self.baselines = {}
        if not args.policy and not args.proxy_wasm:
            native_xff = "native Pingora (MyProxy + X-Forwarded-*)"
            self.targets += [
                (native_xff, lambda port, threads, pin=True: self.start_native(
                    port, threads, pin, "--forwarded-headers")),
                ("wasm first_proxy, instances reused, X-Forwarded-* (the default)",
                 self.host("wasm-reuse-xff", forwarded=True)),
            ]
            self.baselines["wasm first_proxy, instances reused, X-Forwarded-* (the default)"] = native_xff
        if args.proxy_wasm:
            self.targets.append(("wasm proxy-wasm filter pw_bench, static upstream",
                                 self.host("wasm-filter", guests=[
                                     "--filter", ROOT / "guests" / "pw_bench.wasm",
                                     "--upstream", f"127.0.0.1:{upstream_port}"])))
        elif not args.policy:
            self.targets.append(("wasm first_proxy, fresh instance per call",
                                 self.host("wasm-fresh", "--instance-reuse", "1")))
        if args.baseline_host:
            self.targets.append((f"wasm {guest_label}, instances reused, baseline build",
                                 self.host("wasm-baseline", binary=args.baseline_host)))
            if not args.policy and not args.proxy_wasm:
                self.targets.append(("wasm first_proxy, fresh instance per call, baseline build",
                                     self.host("wasm-fresh-baseline", "--instance-reuse", "1",
                                               binary=args.baseline_host)))
        if shutil.which("nginx") and not args.policy and not args.proxy_wasm and not args.no_nginx:
            self.targets.append(("nginx reverse proxy", self.start_nginx))

    def host(self, name, *extra, guests=None, cache=None, binary=None, forwarded=False):
        def start(port, threads, pin=True):
            # The tenant budget is out of reach: this measures the proxy's
            # cost, and a fresh instance per call spends guest time
            # instantiating, past the default 100 ms/s at these rates.
            # Native adds no X-Forwarded-* headers: nor does this host (an
            # earlier build given as a baseline has no such flag, nor adds
            # them), unless measured against native adding them too.
            like_native = [] if binary or forwarded else ["--no-forwarded-headers"]
            return self.procs.start(
                [*(self.pinned(threads) if pin else []), binary or RELEASE / "host", *(guests or self.guest_args),
                 "--listen", f"127.0.0.1:{port}",
                 "--module-cache", cache or self.workdir / "module-cache", "--cpu-ms-per-s", "64000",
                 "-c", pingora_conf(self.workdir, name, threads), *like_native, *extra],
                env={**os.environ, "RUST_LOG": "warn"})
        return start

    def pinned(self, threads):
        """The taskset prefix for a proxy at this many threads: with one
        thread and --pin, every proxy runs on CPU 0 and the load generator
        and upstream on CPU 1, so they never take the proxy's CPU."""
        return ["taskset", "-c", "0"] if self.pin(threads) else []

    def pin(self, threads):
        return self.args.pin and threads == 1

    def start_native(self, port, threads, pin=True, *extra):
        return self.procs.start([*(self.pinned(threads) if pin else []), RELEASE / "examples" / self.native,
                                 "--upstream", f"127.0.0.1:{self.upstream_port}",
                                 "--listen", f"127.0.0.1:{port}", *extra,
                                 "-c", pingora_conf(self.workdir, f"native{len(extra)}", threads)])

    def baseline(self, name):
        """The target `name` is compared with: native, or its like-for-like."""
        return self.baselines.get(name, self.native_name)

    def start_nginx(self, port, threads, pin=True):
        conf = nginx_conf(self.workdir, port, self.upstream_port, threads)
        return self.procs.start([*(self.pinned(threads) if pin else []), "nginx", "-c", conf,
                                 "-p", self.workdir, "-g", "daemon off;"])

    def measure(self, threads):
        """Both measures at this many Pingora threads; returns (cpu, sat):
        per target, a list of per-round results."""
        args, headers = self.args, self.args.headers
        ports, children = {}, {}
        for name, start in self.targets:
            port = free_port()
            child = start(port, threads)
            wait_ok(port, headers=headers)
            run_wrk(port, 1, args.connections, 2, headers=headers)  # warm-up
            self.procs.pause(child)
            ports[name], children[name] = port, child

        def one_round(label, round_number, load):
            results = {}
            for name, _ in self.targets:
                print(f"{threads} thread(s), {label} round {round_number}: {name} ...", file=sys.stderr)
                child = children[name]
                self.procs.resume(child)
                before = group_cpu(child.pid)
                result = load(ports[name])
                after = group_cpu(child.pid)
                result["cpu_ns"], result["user_ns"], result["sys_ns"] = (
                    b - a for a, b in zip(before, after))
                self.procs.pause(child)
                results[name] = result
            return results

        script = delay_script(self.workdir, args.delay_ms)
        cpus = "1" if self.pin(threads) else None
        fixed = lambda port: run_wrk(port, 1, args.fixed_connections, args.duration,
                                     headers=headers, script=script, cpus=cpus)
        saturate = lambda port: run_wrk(port, 1, args.connections, args.duration, headers=headers,
                                        cpus=cpus)
        cpu = self.rounds("fixed-load", one_round, fixed)
        sat = self.rounds("saturation", one_round, saturate)

        for child in children.values():
            self.procs.stop(child)
        return cpu, sat

    def rounds(self, label, one_round, load):
        """Interleaved rounds of load until every CPU ratio's interval is
        within --ci-points (at least --min-rounds, at most --max-rounds)."""
        args = self.args
        runs = {name: [] for name, _ in self.targets}
        for round_number in range(1, args.max_rounds + 1):
            for name, result in one_round(label, round_number, load).items():
                runs[name].append(result)
            if round_number >= args.min_rounds and all(
                    mean_ci(ratios(runs, self.baseline(name), name, cpu_ratio))[1] * 100 <= args.ci_points
                    for name in runs):
                break
        return runs

    def idle_rss(self):
        """VmRSS after start, 100 requests on one connection and 1 s idle,
        with a cold then a warm compiled-module cache; and native's."""
        cache = self.workdir / "rss-cache"
        shutil.rmtree(cache, ignore_errors=True)
        rows = []
        for label, start in [("wasm, cold module cache", self.host("rss", cache=cache)),
                             ("wasm, warm module cache", self.host("rss", cache=cache)),
                             ("native", self.start_native)]:
            port = free_port()
            started = time.monotonic()
            child = start(port, 1, pin=False)
            wait_ok(port, headers=self.args.headers)
            first_response_ms = (time.monotonic() - started) * 1e3
            get_many(port, 100, self.args.headers)
            time.sleep(1)
            rows.append((label, rss_mib(child.pid), first_response_ms))
            self.procs.stop(child)
        return rows


def cpu_ratio(result, base):
    """Native's CPU per request over the target's: 100% is as cheap as native."""
    return (base["cpu_ns"] / base["requests"]) / (result["cpu_ns"] / result["requests"])


def rps_ratio(result, base):
    return result["rps"] / base["rps"]


def ratios(runs, native_name, name, ratio):
    return [ratio(run, base) for run, base in zip(runs[name], runs[native_name])]


def print_tables(bench, threads, cpu, sat):
    args, native_name = bench.args, bench.native_name
    pinning = ("the proxy pinned to CPU 0, wrk and the upstream to CPU 1" if bench.pin(threads)
               else "nothing pinned")
    print(f"\n### {threads} Pingora thread(s), {pinning}\n")
    print("'CPU per request' is the proxy's CPU time (all its threads, user + system) over the "
          "requests served, median of the rounds, split into user and system time; 'vs native' is "
          "the mean of the per-round ratios native CPU per request over the target's (100% is as "
          "cheap as native), with its 95% interval. At saturation the req/s ratio is given too. "
          "A target marked † is compared with native adding X-Forwarded-* too, not with the first "
          "row.\n")
    for label, runs, load in [
            ("fixed offered load", cpu,
             f"wrk -t1 -c{args.fixed_connections}, each connection waiting {args.delay_ms} ms "
             "between requests"),
            ("saturation", sat, f"wrk -t1 -c{args.connections} as fast as answered")]:
        rounds = len(runs[native_name])
        print(f"At {label} ({load}; {args.duration} s per target and round, "
              f"{rounds} interleaved rounds):\n")
        print("| target | req/s | p50 | p99 | CPU per request (user + sys) | over native "
              "| CPU vs native (95% CI) | req/s vs native (95% CI) | non-2xx |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        per_request = lambda r, key: r[key] / r["requests"] / 1e3
        for name, results in runs.items():
            base = bench.baseline(name)
            native_us = median(per_request(r, "cpu_ns") for r in runs[base])
            cpu_mean, cpu_half = mean_ci(ratios(runs, base, name, cpu_ratio))
            rps_mean, rps_half = mean_ci(ratios(runs, base, name, rps_ratio))
            us = median(per_request(r, "cpu_ns") for r in results)
            label = name + (" †" if base != native_name else "")
            errors = sum(r["non2xx"] for r in results)
            socket_errors = [r["socket_errors"] for r in results if r["socket_errors"]]
            print(f"| {label} | {median(r['rps'] for r in results):,.0f} "
                  f"| {median(r['p50'] for r in results):.2f} ms "
                  f"| {median(r['p99'] for r in results):.2f} ms "
                  f"| {us:.2f} µs ({median(per_request(r, 'user_ns') for r in results):.1f} "
                  f"+ {median(per_request(r, 'sys_ns') for r in results):.1f}) "
                  f"| {us - native_us:+.2f} µs | {cpu_mean:.1%} ± {cpu_half:.1%} "
                  f"| {rps_mean:.1%} ± {rps_half:.1%} | {errors}"
                  + (f" (socket errors: {'; '.join(socket_errors)})" if socket_errors else "") + " |")
        print()


def main():
    if "--edge" in sys.argv[1:]:
        # TLS and HTTP/2 downstream: bench/edge.py, with the other flags.
        sys.argv.remove("--edge")
        from edge import main as edge_main
        return edge_main()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pingora-threads", type=int, nargs="+", default=[1, 2],
                        help="Pingora threads of every proxy and of the upstream; each count is a "
                             "separate set of rounds (default: 1 2)")
    parser.add_argument("--duration", type=int, default=3,
                        help="seconds of load per target and round (default 3)")
    parser.add_argument("--delay-ms", type=int, default=1,
                        help="fixed load: each connection's wait between requests (default 1)")
    parser.add_argument("--fixed-connections", type=int, default=8,
                        help="fixed load: wrk connections (default 8)")
    parser.add_argument("--min-rounds", type=int, default=6,
                        help="rounds of each load, at least (default 6)")
    parser.add_argument("--max-rounds", type=int, default=30,
                        help="rounds of each load, at most (default 30)")
    # The first harness's flag: rounds were fixed then.
    parser.add_argument("--rounds", dest="max_rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ci-points", type=float, default=2.0,
                        help="stop a load's rounds once every CPU ratio's 95%% interval is within "
                             "this many points (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="saturation: wrk connections (default 32)")
    parser.add_argument("--no-build", action="store_true", help="use the existing release build")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="at 1 Pingora thread, do not pin the proxy to CPU 0 and the load "
                             "generator and upstream to CPU 1")
    parser.add_argument("--no-nginx", action="store_true", help="leave nginx out even if installed")
    parser.add_argument("--baseline-host", type=Path, metavar="BINARY",
                        help="also measure this host binary (an earlier build) with the same guests")
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
    results = []
    try:
        upstream_port = free_port()
        # The upstream gets the larger thread count, so it is never the limit.
        pin_upstream = ["taskset", "-c", "1"] if args.pin and 1 in args.pingora_threads else []
        procs.start([*pin_upstream, RELEASE / "examples" / "bench_upstream", "--listen", f"127.0.0.1:{upstream_port}",
                     "-c", pingora_conf(workdir, "upstream", max(args.pingora_threads))])
        wait_ok(upstream_port)
        bench = Bench(args, procs, workdir, upstream_port)
        for threads in args.pingora_threads:
            results.append((threads, *bench.measure(threads)))
        rss = bench.idle_rss()
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{machine_line()} Keep-alive, loopback; the upstream is host/examples/bench_upstream.")
    for threads, cpu, sat in results:
        print_tables(bench, threads, cpu, sat)
    print("\nIdle RSS (start, 100 requests on one connection, 1 s idle, then VmRSS; 1 Pingora thread):\n")
    print("| proxy | idle RSS | start to first response |")
    print("|---|---:|---:|")
    for label, mib, ms in rss:
        print(f"| {label} | {mib:.1f} MiB | {ms:.0f} ms |")


if __name__ == "__main__":
    main()
