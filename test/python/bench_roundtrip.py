"""Round-trip benchmark of the worker: N sequential echo requests of ~100 bytes.

    python3 test/python/bench_roundtrip.py [-n 10000] [--json json]

Spawns the worker exactly as Rust does (see worker_harness.py) and measures
send-request -> receive-complete-reply, one request in flight at a time.  The
client is Python too, so the figure is an upper bound on what the Rust side
will see.  ``--baseline`` adds the same loop against a minimal Python process
that only copies frames back (no JSON, no dispatch), to show what the
worker's own layer costs on top of the pipes.  ``--json json`` forces the
stdlib codec even where orjson is installed.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_harness import Worker  # noqa: E402

# A frame-copying process: the floor for "Python behind two pipes".
RAW_ECHO = r"""
import os
r = os.fdopen(3, "rb", buffering=0, closefd=False).readinto
write = os.write
hdr = bytearray(4)
while True:
    if r(hdr) != 4:
        os._exit(0)
    n = int.from_bytes(hdr, "big")
    body = bytearray(n)
    got = r(body)
    if got != n:
        os._exit(0)
    write(4, bytes(hdr) + body)
"""


def _read_exact(fd, n):
    buf = os.read(fd, n)
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError("reply stream closed")
        buf += chunk
    return buf


def measure(worker, n):
    req_w, rep_r = worker.req_w, worker.rep_r
    write, read_exact, from_bytes = os.write, _read_exact, int.from_bytes
    # ~100-byte payloads, built up front so the client loop stays cheap.
    frames = []
    for i in range(n):
        body = (b'{"id":%d,"command":"echo","args":{"text":"the quick brown fox jumps",'
                b'"n":%d,"ok":true}}' % (i + 1, i))
        frames.append(len(body).to_bytes(4, "big") + body)
    sizes = len(frames[0]) - 4
    # warm-up
    for f in frames[:200]:
        write(req_w, f)
        read_exact(rep_r, from_bytes(read_exact(rep_r, 4), "big"))
    t0 = time.perf_counter()
    last = None
    for f in frames:
        write(req_w, f)
        last = read_exact(rep_r, from_bytes(read_exact(rep_r, 4), "big"))
    elapsed = time.perf_counter() - t0
    assert last.startswith(b'{"id":%d,' % n), last[:60]
    return elapsed / n * 1e6, sizes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--json", choices=("auto", "json"), default="auto")
    ap.add_argument("--baseline", action="store_true")
    opts = ap.parse_args()

    env = {"DSPEX_WORKER_JSON": "json"} if opts.json == "json" else None
    with Worker(env=env) as w:
        backend = w.call("ping")["result"]["json"]
        us, size = measure(w, opts.n)
    print(f"worker echo, json={backend}: {opts.n} sequential requests of {size} bytes: "
          f"{us:.1f} us/request")

    if opts.baseline:
        print_baseline(opts.n)


def print_baseline(n):
    # Same plumbing as Worker, but running RAW_ECHO instead of dspex_worker.py.
    raw = Worker(argv=[sys.executable, "-c", RAW_ECHO])
    try:
        us, size = measure(raw, n)
    finally:
        raw.close()
    print(f"baseline raw frame copy (no JSON): {n} requests of {size} bytes: "
          f"{us:.1f} us/request")


if __name__ == "__main__":
    main()
