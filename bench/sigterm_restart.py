#!/usr/bin/env python3
"""What SIGTERM and a restart cost, for comparison with `-u` (whose figures
come from the test `edge::upgrade_under_load_hands_over_without_failing_a_request`).

The release host with guests/first_proxy.wasm in front of
host/examples/bench_upstream; 4 keep-alive clients sending back to back;
SIGTERM at 1 s; a new process started on the same port as soon as the old
one has exited. Prints the requests, the failures and when the restarted
process served again. `grace_period_seconds` is 1. Loopback only; about
3 s of load.

    cargo build --release -p host --bin host --examples
    python3 bench/sigterm_restart.py
"""

import http.client
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import RELEASE, ROOT, free_port  # noqa: E402

CLIENTS = 4


def answers(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/")
        return conn.getresponse().status == 200
    except OSError:
        return False


def wait_answers(port, within=30.0):
    started = time.monotonic()
    while not answers(port):
        if time.monotonic() - started > within:
            raise SystemExit(f"nothing answers on port {port}")
        time.sleep(0.005)


class Load:
    """Clients sending GETs back to back on keep-alive connections,
    reconnecting when a response says `Connection: close` or a request
    fails; every request's start time and outcome is kept."""

    def __init__(self, port):
        self.port, self.running, self.results = port, True, []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def client(self):
        conn = None
        while self.running:
            started = time.monotonic()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                if (response.getheader("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except OSError:
                ok, conn = False, None
            with self.lock:
                self.results.append((started, ok))
            time.sleep(0.001)

    def stop(self):
        self.running = False
        for thread in self.threads:
            thread.join()


def main():
    work = Path(tempfile.mkdtemp(prefix="sigterm-restart-"))
    conf = work / "conf.yaml"
    conf.write_text(f"---\nversion: 1\nthreads: 1\npid_file: {work}/proxy.pid\n"
                    f"upgrade_sock: {work}/upgrade.sock\n"
                    "grace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1\n")
    upstream_port, port = free_port(), free_port()
    config = f'{{"upstream": "127.0.0.1:{upstream_port}", "tls": false}}'
    proxy_argv = [RELEASE / "host", ROOT / "guests" / "first_proxy.wasm", "--module-config", config,
                  "--listen", f"127.0.0.1:{port}", "-c", conf]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    upstream = subprocess.Popen([RELEASE / "examples" / "bench_upstream", "--listen",
                                 f"127.0.0.1:{upstream_port}", "-c", conf], **quiet)
    old = subprocess.Popen(proxy_argv, **quiet)
    new = None
    try:
        wait_answers(port)
        load = Load(port)
        time.sleep(1)
        terminated = time.monotonic()
        old.send_signal(signal.SIGTERM)
        old.wait(timeout=30)
        exited = time.monotonic() - terminated
        new = subprocess.Popen(proxy_argv, **quiet)
        wait_answers(port)
        serving = time.monotonic() - terminated
        time.sleep(1)
        load.stop()
    finally:
        for child in (old, new, upstream):
            if child:
                child.kill()
    failed = [started - terminated for started, ok in load.results if not ok]
    print(f"requests {len(load.results)}, failed {len(failed)}; old exited {exited:.2f} s after "
          f"SIGTERM; restarted process serving {serving:.2f} s after SIGTERM; failures from "
          f"{min(failed, default=0):.2f} s to {max(failed, default=0):.2f} s after SIGTERM")


if __name__ == "__main__":
    main()
