#!/usr/bin/env python3
"""Edge benchmark: TLS and HTTP/2 downstream, on this machine, comparing

- native Pingora (host/examples/native_proxy: the tutorial's MyProxy
  compiled in) with a TLS listener: Mozilla intermediate settings, h2 and
  http/1.1 by ALPN, one certificate;
- this proxy with guests/first_proxy.wasm and `--tls-listen`, the same
  certificate given as `--cert/--key` (chosen per handshake by its SNI
  callback), without and with its X-Forwarded-* headers (native adds
  none);

in front of the same local upstream (host/examples/bench_upstream), at one
Pingora thread pinned to CPU 0 (the load generators and the upstream on
CPU 1). Three loads, each target measured in interleaved rounds (the
others paused with SIGSTOP):

1. **keep-alive HTTPS**: wrk, --connections connections, HTTP/1.1 over TLS;
2. **TLS handshakes**: wrk with `Connection: close`, so every request is
   a new TCP connection and a full TLS handshake (RSA 2048, no resumption):
   its req/s is handshakes per second;
3. **HTTP/2**: h2load (nghttp2-client), --h2-clients connections over TLS,
   --h2-streams concurrent streams each.

Two figures: req/s, and the proxy's own CPU time per request (user +
system of its process group, from schedstat), which depends less on
the load generator and upstream sharing CPU 1 (TLS costs wrk and h2load
CPU too). Each ratio against native is the mean of the per-round ratios
with a 95% confidence interval; for CPU, native's time over the target's. Loopback only; every
load is bounded by --duration and --rounds.

    python3 bench/edge.py [--rounds 6] [--duration 3] [--no-build]
    python3 bench/run.py --edge [...]          (the same)
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (RELEASE, ROOT, Processes, free_port, group_cpu,  # noqa: E402
                 machine_line, mean_ci, median, pingora_conf, prepare, run_wrk, wait_ok)

PROXY_CPU, LOAD_CPU = "0", "1"


def certificate(workdir):
    """A self-signed RSA 2048 certificate for localhost."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def run_h2load(port, clients, streams, duration):
    """h2load over TLS (ALPN h2) for duration seconds; returns a dict
    with rps and failed (requests that failed or errored)."""
    cmd = ["taskset", "-c", LOAD_CPU, "h2load", "-c", str(clients), "-m", str(streams),
           "-D", str(duration), "-t", "1", f"https://localhost:{port}/"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 60).stdout
    if "Application protocol: h2" not in out:
        raise SystemExit(f"h2load did not negotiate h2 with port {port}:\n{out}")
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done, failed, errored = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, (\d+) errored",
        out).groups()
    return {"rps": rps, "requests": int(done), "failed": int(failed) + int(errored)}


class Targets:
    """The proxies measured and how each starts."""

    def __init__(self, procs, workdir, upstream_port, cert, key):
        self.procs, self.workdir = procs, workdir
        self.upstream = f"127.0.0.1:{upstream_port}"
        self.cert, self.key = cert, key
        self.native = "native Pingora (MyProxy compiled in)"
        self.list = [
            (self.native, self.start_native),
            ("wasm first_proxy, no X-Forwarded-*", self.start_host("--no-forwarded-headers")),
            ("wasm first_proxy, X-Forwarded-* (default)", self.start_host()),
        ]

    def start_native(self, port, tls_port):
        return self.procs.start(["taskset", "-c", PROXY_CPU, RELEASE / "examples" / "native_proxy",
                                 "--upstream", self.upstream, "--listen", f"127.0.0.1:{port}",
                                 "--tls-listen", f"127.0.0.1:{tls_port}",
                                 "--cert", self.cert, "--key", self.key,
                                 "-c", pingora_conf(self.workdir, "native", 1)])

    def start_host(self, *extra):
        def start(port, tls_port):
            config = f'{{"upstream": "{self.upstream}", "tls": false}}'
            return self.procs.start(
                ["taskset", "-c", PROXY_CPU, RELEASE / "host", ROOT / "guests" / "first_proxy.wasm",
                 "--module-config", config, "--listen", f"127.0.0.1:{port}",
                 "--tls-listen", f"127.0.0.1:{tls_port}", "--cert", self.cert, "--key", self.key,
                 "--module-cache", self.workdir / "module-cache", "--cpu-ms-per-s", "64000",
                 "-c", pingora_conf(self.workdir, f"host{len(extra)}", 1), *extra])
        return start


LOADS = ["keep-alive HTTPS", "TLS handshakes", "HTTP/2"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each load (default 6)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per target, load and round (default 3)")
    parser.add_argument("--connections", type=int, default=32,
                        help="wrk connections for keep-alive HTTPS and handshakes (default 32)")
    parser.add_argument("--h2-clients", type=int, default=8, help="h2load connections (default 8)")
    parser.add_argument("--h2-streams", type=int, default=16, help="h2load streams per connection (default 16)")
    parser.add_argument("--no-build", action="store_true", help="use the existing release build")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        raise SystemExit("h2load is needed: apt-get install nghttp2-client")
    prepare(args.no_build)

    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="wasm-pingora-edge-"))
    results = {load: {} for load in LOADS}
    try:
        cert, key = certificate(workdir)
        upstream_port = free_port()
        procs.start(["taskset", "-c", LOAD_CPU, RELEASE / "examples" / "bench_upstream",
                     "--listen", f"127.0.0.1:{upstream_port}", "-c", pingora_conf(workdir, "upstream", 1)])
        wait_ok(upstream_port)
        targets = Targets(procs, workdir, upstream_port, str(cert), str(key))
        running = []
        for label, start in targets.list:
            port, tls_port = free_port(), free_port()
            child = start(port, tls_port)
            wait_ok(port)
            procs.pause(child)
            running.append((label, child, tls_port))
        for round_number in range(1, args.rounds + 1):
            for load in LOADS:
                for label, child, tls_port in running:
                    procs.resume(child)
                    cpu_before = group_cpu(child.pid)[0]
                    if load == "HTTP/2":
                        result = run_h2load(tls_port, args.h2_clients, args.h2_streams, args.duration)
                    else:
                        headers = ["Connection: close"] if load == "TLS handshakes" else []
                        result = run_wrk(tls_port, 1, args.connections, args.duration, headers=headers,
                                         cpus=LOAD_CPU, scheme="https")
                        result["failed"] = result["non2xx"]
                    result["cpu_us"] = (group_cpu(child.pid)[0] - cpu_before) / 1e3 / max(result["requests"], 1)
                    procs.pause(child)
                    results[load].setdefault(label, []).append(result)
            print(f"round {round_number}/{args.rounds} done", file=sys.stderr)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{machine_line()} 1 Pingora thread, proxy pinned to CPU {PROXY_CPU}, load and upstream to "
          f"CPU {LOAD_CPU}; {args.rounds} rounds of {args.duration} s per load and target.")
    for load in LOADS:
        print(f"\n{load}:\n")
        print("| proxy | req/s (median) | req/s vs native | CPU per request (median) "
              "| CPU vs native | failed |")
        print("|---|---:|---:|---:|---:|---:|")
        native = results[load][targets.native]
        for label, _, _ in running:
            runs = results[load][label]
            ratio, ci = mean_ci(100 * r["rps"] / n["rps"] for r, n in zip(runs, native))
            cpu_ratio, cpu_ci = mean_ci(100 * n["cpu_us"] / r["cpu_us"] for r, n in zip(runs, native))
            rps = median(r["rps"] for r in runs)
            cpu = median(r["cpu_us"] for r in runs)
            failed = sum(r["failed"] for r in runs)
            print(f"| {label} | {rps:,.0f} | {ratio:.1f}% ± {ci:.1f} | {cpu:.1f} µs "
                  f"| {cpu_ratio:.1f}% ± {cpu_ci:.1f} | {failed} |")


if __name__ == "__main__":
    main()
