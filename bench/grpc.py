#!/usr/bin/env python3
"""gRPC benchmark: unary gRPC calls through the proxy, on this machine,
comparing

- native Pingora (host/examples/native_proxy: the tutorial's MyProxy
  compiled in) with `--h2c --upstream-h2c`: HTTP/2 with prior knowledge
  from the client and to the upstream (100 streams per upstream
  connection, as the host);
- this proxy with a tenant whose static upstream is `protocol: h2c` and no
  guest at all (`--h2c`, X-Forwarded-* on, as a user runs it; native adds
  none, so this is the host's plumbing plus those headers);
- the same tenant with guests/policy.wasm routing with `ALPN::H2` (its
  four hooks on every call: the representative policy).

The far end is a real grpcio server (tests/fixtures/grpc/grpc_end.py,
`/test.Echo/Unary`); the load is h2load (nghttp2-client) with a framed
gRPC message as the POST body, `content-type: application/grpc` and
`te: trailers`: --clients h2c connections, --streams concurrent calls each.
One Pingora thread pinned to CPU 0; h2load and the server on CPU 1. Each
target is measured in interleaved rounds (the others paused with
SIGSTOP).

Two figures: calls per second, and the proxy's own CPU time per call
(user + system of its process group, from schedstat), which depends less
on the server and load generator sharing CPU 1. Each ratio against native
is the mean of the per-round ratios with a 95% confidence interval; for
CPU, native's time over the target's. Before measuring, one call through
each target is checked with the grpcio client (status OK, the echo, the
trailers). Loopback only; every load is bounded by --duration and
--rounds.

    python3 bench/grpc.py [--rounds 6] [--duration 3] [--no-build]
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (RELEASE, ROOT, Processes, free_port, group_cpu,  # noqa: E402
                 machine_line, mean_ci, median, pingora_conf, prepare)

PROXY_CPU, LOAD_CPU = "0", "1"
GRPC_END = ROOT / "tests" / "fixtures" / "grpc" / "grpc_end.py"
AUTHORITY = "api.example"


def grpc_frame(message):
    return b"\0" + len(message).to_bytes(4, "big") + message


def start_server(procs):
    """The grpcio server on CPU 1; its port."""
    child = subprocess.Popen(["taskset", "-c", LOAD_CPU, sys.executable, GRPC_END, "serve", "--port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                             text=True)
    procs.children.append(child)
    line = child.stdout.readline()
    if not line.startswith("listening "):
        raise SystemExit(f"the grpc server did not start: {line!r}")
    return int(line.split()[1])


def check_call(port, headers=()):
    """One call through port with the grpcio client: OK, echoed, trailers."""
    args = [sys.executable, GRPC_END, "call", "--target", f"127.0.0.1:{port}", "--authority", AUTHORITY]
    for header in headers:
        args += ["--metadata", header]
    reply = json.loads(subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout)
    if reply["code"] != 0 or reply["response"] != "echo:hello" \
            or reply["trailing_metadata"].get("x-trailer") != "unary-done":
        raise SystemExit(f"a call through port {port} did not come back whole: {reply}")


def wait_grpc(port, headers=(), timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_call(port, headers)
            return
        except (subprocess.CalledProcessError, SystemExit, json.JSONDecodeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_h2load(port, body, clients, streams, duration, headers=()):
    """Unary calls by h2load over h2c for duration seconds: calls/s, calls
    done, and calls that failed (h2load counts HTTP status only: a gRPC
    status other than OK would still be 200, which check_call rules out
    for each target before the rounds)."""
    cmd = ["taskset", "-c", LOAD_CPU, "h2load", "-c", str(clients), "-m", str(streams),
           "-D", str(duration), "-t", "1", "-d", str(body),
           "-H", f":authority: {AUTHORITY}", "-H", "content-type: application/grpc",
           "-H", "te: trailers"]
    for header in headers:
        cmd += ["-H", header]
    cmd.append(f"http://127.0.0.1:{port}/test.Echo/Unary")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done, succeeded, failed, errored = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
        out).groups()
    return {"rps": rps, "requests": int(done),
            "failed": int(failed) + int(errored) + int(done) - int(succeeded)}


class Targets:
    """The proxies measured and how each starts."""

    def __init__(self, procs, workdir, upstream_port):
        self.procs, self.workdir = procs, workdir
        self.upstream = f"127.0.0.1:{upstream_port}"
        self.native = "native Pingora (MyProxy compiled in, h2c both ways)"
        self.list = [
            (self.native, self.start_native, ()),
            ("host, tenant upstream protocol: h2c, no guest", self.start_host(None), ()),
            ("host, policy.wasm routing with ALPN::H2", self.start_host("policy"), ("x-api-key: k",)),
        ]

    def start_native(self, port):
        return self.procs.start(["taskset", "-c", PROXY_CPU, RELEASE / "examples" / "native_proxy",
                                 "--upstream", self.upstream, "--sni", AUTHORITY,
                                 "--listen", f"127.0.0.1:{port}", "--h2c", "--upstream-h2c",
                                 "-c", pingora_conf(self.workdir, "native", 1)])

    def start_host(self, guest):
        def start(port):
            tenants = self.workdir / f"tenants-{guest}.yaml"
            route = (f'    module: {ROOT / "guests" / (guest + ".wasm")}\n'
                     f'    config: {{upstream: "{self.upstream}", h2: true}}\n') if guest else \
                f'    upstream: {{address: "{self.upstream}", protocol: h2c}}\n'
            tenants.write_text(f'tenants:\n  - name: api\n    hosts: ["{AUTHORITY}"]\n{route}')
            return self.procs.start(
                ["taskset", "-c", PROXY_CPU, RELEASE / "host", "--tenants", tenants, "--h2c",
                 "--listen", f"127.0.0.1:{port}", "--module-cache", self.workdir / "module-cache",
                 "--cpu-ms-per-s", "64000", "-c", pingora_conf(self.workdir, f"host-{guest}", 1)])
        return start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per target (default 6)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per target and round (default 3)")
    parser.add_argument("--clients", type=int, default=4, help="h2load connections (default 4)")
    parser.add_argument("--streams", type=int, default=16, help="concurrent calls per connection (default 16)")
    parser.add_argument("--no-build", action="store_true", help="use the existing release build")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        raise SystemExit("h2load is needed: apt-get install nghttp2-client")
    prepare(args.no_build)

    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="wasm-pingora-grpc-"))
    results = {}
    try:
        body = workdir / "call.bin"
        body.write_bytes(grpc_frame(b"hello"))
        targets = Targets(procs, workdir, start_server(procs))
        running = []
        for label, start, headers in targets.list:
            port = free_port()
            child = start(port)
            wait_grpc(port, [h.replace(": ", "=", 1) for h in headers])
            procs.pause(child)
            running.append((label, child, port, headers))
        for round_number in range(1, args.rounds + 1):
            for label, child, port, headers in running:
                procs.resume(child)
                cpu_before = group_cpu(child.pid)[0]
                result = run_h2load(port, body, args.clients, args.streams, args.duration, headers)
                result["cpu_us"] = (group_cpu(child.pid)[0] - cpu_before) / 1e3 / max(result["requests"], 1)
                procs.pause(child)
                results.setdefault(label, []).append(result)
            print(f"round {round_number}/{args.rounds} done", file=sys.stderr)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{machine_line()} 1 Pingora thread, proxy pinned to CPU {PROXY_CPU}, h2load and the grpcio "
          f"server on CPU {LOAD_CPU}; {args.rounds} rounds of {args.duration} s per target; "
          f"{args.clients} h2c connections x {args.streams} concurrent unary calls.\n")
    print("| proxy | calls/s (median) | calls/s vs native | CPU per call (median) | CPU vs native | failed |")
    print("|---|---:|---:|---:|---:|---:|")
    native = results[targets.native]
    for label, _, _, _ in running:
        runs = results[label]
        ratio, ci = mean_ci(100 * r["rps"] / n["rps"] for r, n in zip(runs, native))
        cpu_ratio, cpu_ci = mean_ci(100 * n["cpu_us"] / r["cpu_us"] for r, n in zip(runs, native))
        rps = median(r["rps"] for r in runs)
        cpu = median(r["cpu_us"] for r in runs)
        failed = sum(r["failed"] for r in runs)
        print(f"| {label} | {rps:,.0f} | {ratio:.1f}% ± {ci:.1f} | {cpu:.1f} µs "
              f"| {cpu_ratio:.1f}% ± {cpu_ci:.1f} | {failed} |")


if __name__ == "__main__":
    main()
