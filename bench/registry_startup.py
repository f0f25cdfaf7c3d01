#!/usr/bin/env python3
"""Start-up with modules from a registry: the time from the proxy's start
to a 200 from its last tenant, with --tenants tenants (default 50), each
running its own module (guests/first_proxy.wasm with a custom section
naming the tenant: other bytes, the same behaviour), in four ways:

- registry, cold: the modules are oci:// references to a local
  docker-registry (Debian's package, distribution 2.8), and the module
  cache is empty: every module is pulled and compiled;
- registry, warm: the same cache again: each tag is resolved at the
  registry (one manifest request), nothing is pulled or compiled;
- files, cold: the same modules as local files, no compiled cache;
- files, warm: local files and a warm compiled cache.

Each way runs --rounds times (a fresh cache per cold round); the table
gives the median and the range. Loopback only; the upstream is a local
Python HTTP server.

    python3 bench/registry_startup.py [--tenants 50] [--rounds 3] [--no-build]
"""

import argparse
import hashlib
import http.client
import http.server
import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "target" / "release" / "host"
MODULE = ROOT / "guests" / "first_proxy.wasm"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def module_bytes(index):
    """first_proxy with a custom section `t` holding the tenant's index."""
    base = MODULE.read_bytes()
    payload = b"\x01t" + str(index).encode()
    assert len(payload) < 128
    return base + bytes([0, len(payload)]) + payload


class Registry:
    """docker-registry on a free loopback port, storing in a temporary directory."""

    def __init__(self, work):
        self.port = free_port()
        root = Path(work) / "registry"
        root.mkdir()
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: bench\n")
        self.process = subprocess.Popen(["docker-registry", "serve", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("docker-registry did not start")
                time.sleep(0.02)

    def request(self, method, path, body=b"", headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    def push_blob(self, repository, data):
        digest = sha256(data)
        started = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        assert started.status == 202, started.status
        location = started.getheader("Location")
        path = location.split(f"127.0.0.1:{self.port}", 1)[-1]
        separator = "&" if "?" in path else "?"
        done = self.request("PUT", f"{path}{separator}digest={digest}", body=data,
                            headers={"Content-Type": "application/octet-stream"})
        assert done.status == 201, done.status
        return digest

    def push_wasm(self, repository, tag, data):
        """Pushes `data` as a CNCF wasm artifact."""
        config = b"{}"
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v0+json",
                       "digest": self.push_blob(repository, config), "size": len(config)},
            "layers": [{"mediaType": "application/wasm",
                        "digest": self.push_blob(repository, data), "size": len(data)}],
        }
        put = self.request("PUT", f"/v2/{repository}/manifests/{tag}",
                           body=json.dumps(manifest).encode(),
                           headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert put.status == 201, put.status

    def stop(self):
        self.process.kill()
        self.process.wait()


def upstream():
    """A local HTTP server answering 200 to anything; its address."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}"


def tenants_file(path, modules, upstream_addr, registry_port=None):
    lines = []
    if registry_port:
        lines += ["registries:", f'  "127.0.0.1:{registry_port}": {{ plain_http: true }}']
    lines.append("tenants:")
    for index, module in enumerate(modules):
        lines += [f"  - name: t{index}", f'    hosts: ["t{index}.example"]',
                  f'    module: "{module}"',
                  f'    config: {{ upstream: "{upstream_addr}", tls: false, host: "t{index}" }}']
    path.write_text("\n".join(lines) + "\n")


def time_to_last_tenant(work, tenants, cache, last_host):
    """Seconds from the proxy's start to a 200 for `last_host`."""
    port = free_port()
    conf = Path(work) / "conf.yaml"
    conf.write_text(f"---\nversion: 1\nthreads: 1\npid_file: {work}/proxy.pid\n"
                    f"upgrade_sock: {work}/upgrade.sock\n")
    args = [str(HOST), "--tenants", str(tenants), "--listen", f"127.0.0.1:{port}",
            "-c", str(conf), "--module-cache", str(cache)]
    started = time.monotonic()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "RUST_LOG": "error"})
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the proxy exited ({process.returncode}): {' '.join(args)}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/", headers={"Host": last_host})
                status = connection.getresponse().status
                connection.close()
                if status == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            if time.monotonic() - started > 300:
                raise SystemExit("no 200 within 300 s")
            time.sleep(0.005)
    finally:
        process.kill()
        process.wait()


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=50, help="tenants (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each way (default 3)")
    parser.add_argument("--no-build", action="store_true", help="use the existing release build")
    args = parser.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "host", "--bin", "host"],
                       cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as work:
        registry = Registry(work)
        try:
            upstream_addr = upstream()
            files_dir = Path(work) / "modules"
            files_dir.mkdir()
            oci, files = [], []
            for index in range(args.tenants):
                data = module_bytes(index)
                registry.push_wasm(f"bench/m{index}", "v1", data)
                oci.append(f"oci://127.0.0.1:{registry.port}/bench/m{index}:v1")
                path = files_dir / f"m{index}.wasm"
                path.write_bytes(data)
                files.append(str(path))
            by_registry = Path(work) / "registry.yaml"
            tenants_file(by_registry, oci, upstream_addr, registry.port)
            by_files = Path(work) / "files.yaml"
            tenants_file(by_files, files, upstream_addr)
            last = f"t{args.tenants - 1}.example"
            results = {}
            for name, tenants in [("registry", by_registry), ("files", by_files)]:
                cold, warm = [], []
                warm_cache = Path(work) / f"warm-{name}"
                time_to_last_tenant(work, tenants, warm_cache, last)
                for round_ in range(args.rounds):
                    cold_cache = Path(work) / f"cold-{name}-{round_}"
                    cold.append(time_to_last_tenant(work, tenants, cold_cache, last))
                    warm.append(time_to_last_tenant(work, tenants, warm_cache, last))
                results[f"{name}, cold cache"] = cold
                results[f"{name}, warm cache"] = warm
        finally:
            registry.stop()
    print(f"\n{cpu_model()}, {os.cpu_count()} CPUs; {args.tenants} tenants, each its own "
          f"module ({MODULE.stat().st_size:,} bytes), {args.rounds} rounds; release build.\n")
    print("| modules from | start to the last tenant's first 200 (median) | range |")
    print("|---|---:|---:|")
    for name, times in results.items():
        print(f"| {name} | {statistics.median(times):.2f} s "
              f"| {min(times):.2f}-{max(times):.2f} s |")


if __name__ == "__main__":
    main()
