#!/usr/bin/env python3
"""What SIGTERM and a restart cost, for comparison with `-u`: the release
host with first_proxy in front of bench_upstream, 4 keep-alive clients
(Python, back to back), SIGTERM at 1 s, a new process started on the same
port as soon as the old one exits. Prints requests, failures and the gap.
grace_period_seconds is 1. Loopback only; bounded to about 3 s of load.

    python3 bench/sigterm_restart.py      (after cargo build --release -p host --examples)
"""
import http.client, os, signal, socket, subprocess, tempfile, threading, time
WORK=tempfile.mkdtemp(prefix='sigterm-restart-')
ROOT=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def free_port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
up=free_port(); port=free_port()
conf=os.path.join(WORK,"conf.yaml")
open(conf,"w").write(f"---\nversion: 1\nthreads: 1\npid_file: {WORK}/p.pid\nupgrade_sock: {WORK}/u.sock\ngrace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1\n")
upc=subprocess.Popen([f"{ROOT}/target/release/examples/bench_upstream","--listen",f"127.0.0.1:{up}","-c",conf],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
def start():
    return subprocess.Popen([f"{ROOT}/target/release/host",f"{ROOT}/guests/first_proxy.wasm","--module-config",f'{{"upstream":"127.0.0.1:{up}","tls":false}}',"--listen",f"127.0.0.1:{port}","-c",conf],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
def ok():
    try:
        c=http.client.HTTPConnection("127.0.0.1",port,timeout=1); c.request("GET","/"); return c.getresponse().status==200
    except OSError: return False
old=start()
while not ok(): time.sleep(0.01)
stop=False; results=[]; lock=threading.Lock()
def load():
    conn=None
    while not stop:
        t=time.monotonic()
        try:
            if conn is None: conn=http.client.HTTPConnection("127.0.0.1",port,timeout=3)
            conn.request("GET","/"); r=conn.getresponse(); r.read()
            res=r.status==200
            if r.getheader("connection","").lower()=="close": conn.close(); conn=None
        except OSError as e:
            res=False; conn=None
        with lock: results.append((t,res))
        time.sleep(0.001)
ths=[threading.Thread(target=load) for _ in range(4)]
[t.start() for t in ths]
time.sleep(1)
t_term=time.monotonic(); old.send_signal(signal.SIGTERM)
old.wait(); t_exit=time.monotonic()
new=start()
while not ok(): time.sleep(0.005)
t_new=time.monotonic()
time.sleep(1); stop=True; [t.join() for t in ths]
new.kill(); upc.kill()
fails=[t-t_term for t,r in results if not r]
print(f"requests {len(results)}, failed {len(fails)}; old exited {t_exit-t_term:.2f}s after SIGTERM; restarted process serving {t_new-t_term:.2f}s after SIGTERM; failures between {min(fails) if fails else 0:.2f}s and {max(fails) if fails else 0:.2f}s")
