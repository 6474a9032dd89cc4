"""When, and with which status, a worker spawned as the Rust NIF spawns it exits: a
handler module that fails at start, the end of the request stream, a stream that cannot be
trusted, a parent that is gone.

Run: python3 -m unittest discover -s test/python -v
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_harness import PYTHON_DIR, WorkerCase  # noqa: E402


class StartupFailures(WorkerCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dspex_handlers_")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def write_module(self, name, source):
        with open(os.path.join(self.tmp, name + ".py"), "w") as f:
            f.write(textwrap.dedent(source))

    def test_handler_import_error(self):
        self.write_module("broken_handlers", """
            import this_module_does_not_exist_xyz
            def f(args):
                return 1
        """)
        w = self.spawn(handlers="broken_handlers", pythonpath=[self.tmp])
        self.assertEqual(w.wait(10), 2)
        err = w.stderr_text()
        self.assertIn("Traceback (most recent call last):", err)
        self.assertIn("ModuleNotFoundError", err)
        self.assertIn("this_module_does_not_exist_xyz", err)
        self.assertIn("broken_handlers", err)

    def test_handler_syntax_error(self):
        self.write_module("bad_syntax", "def f(args)\n    return 1\n")
        w = self.spawn(handlers="bad_syntax", pythonpath=[self.tmp])
        self.assertEqual(w.wait(10), 2)
        self.assertIn("SyntaxError", w.stderr_text())

    def test_missing_handler_module(self):
        w = self.spawn(handlers="no_such_handlers_module", pythonpath=[self.tmp])
        self.assertEqual(w.wait(10), 2)
        self.assertIn("No module named 'no_such_handlers_module'", w.stderr_text())

    def test_clash_with_builtin(self):
        self.write_module("clashing", """
            def ping(args):
                return "mine"
            def fine(args):
                return 1
        """)
        w = self.spawn(handlers="clashing", pythonpath=[self.tmp])
        self.assertEqual(w.wait(10), 2)
        lines = [l for l in w.stderr_text().splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("'ping'", lines[0])
        self.assertIn("built-in", lines[0])


class StreamHandling(WorkerCase):
    def test_eof_at_frame_boundary_exits_zero(self):
        w = self.spawn()
        self.assertTrue(w.call("ping")["success"])
        t0 = time.monotonic()
        w.close_requests()
        self.assertEqual(w.wait(5), 0)
        self.assertLess(time.monotonic() - t0, 2.0)

    def test_eof_mid_header_and_mid_frame_exit_zero(self):
        for partial in (b"\x00\x00", (100).to_bytes(4, "big") + b'{"id": 1'):
            w = self.spawn()
            os.write(w.req_w, partial)
            w.close_requests()
            self.assertEqual(w.wait(5), 0, partial)

    def test_oversize_request_exits_three(self):
        w = self.spawn(max_frame=1024)
        self.assertTrue(w.call("echo", {"s": "x" * 900})["success"])
        w.send_raw(b"{}", length=2000)  # header announces more than --max-frame
        self.assertEqual(w.wait(5), 3)
        self.assertIn("exceeds --max-frame 1024", w.stderr_text())

    def test_garbage_json_with_recoverable_id(self):
        w = self.spawn()
        w.send_raw(b'{"id": 17, "command": "echo", "args": {')
        self.assertEqual(w.recv()["id"], 17)
        w.send_raw(b'{"id":18,"command":"echo","args":{"s":"\xff\xfe"}}')  # bad UTF-8
        reply = w.recv()
        self.assertEqual(reply["id"], 18)
        self.assertError(reply, "ProtocolError", "not valid UTF-8 JSON")
        self.assertTrue(w.call("ping")["success"])  # stream still in sync

    def test_wrong_shape_with_id(self):
        w = self.spawn()
        for rid, payload in ((5, {"id": 5, "command": 3, "args": {}}),
                             (6, {"id": 6, "command": "echo", "args": [1]}),
                             (8, {"id": 8, "command": "echo"})):
            w.send_raw(json.dumps(payload).encode())
            reply = w.recv()
            self.assertEqual(reply["id"], rid)
            self.assertError(reply, "ProtocolError")
        self.assertTrue(w.call("ping")["success"])

    def test_garbage_without_id_exits_three(self):
        for payload in (b"not json at all", b"[1, 2, 3]", b'{"id": "x", "command": "echo", "args": {}}', b""):
            w = self.spawn()
            w.send_raw(payload)
            self.assertEqual(w.wait(5), 3, payload)
            self.assertIn("status 3", w.stderr_text())

    def test_parent_death_is_noticed(self):
        # An intermediate process hands fds 3/4 on to the worker and dies at
        # once, while this test keeps the request pipe's write end open: no
        # EOF ever comes, so only the parent watcher can end the worker.
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self.addCleanup(os.close, req_w)
        self.addCleanup(os.close, rep_r)
        script = textwrap.dedent(f"""
            import os, subprocess, sys
            p = subprocess.Popen([sys.executable, {os.path.join(PYTHON_DIR, "dspex_worker.py")!r},
                                  "--worker-id", "9", "--pool", "orphan"],
                                 pass_fds=(3, 4), stdin=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            os.write(1, b"%d\\n" % p.pid)
            sys.stdin.read()  # until the test closes our stdin
            os._exit(0)
        """)

        def preexec():
            import fcntl
            a = fcntl.fcntl(req_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(rep_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        mid = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stdin=subprocess.PIPE, preexec_fn=preexec,
                               pass_fds=(3, 4))
        os.close(req_r)
        os.close(rep_w)
        pid = int(mid.stdout.readline())
        mid.stdout.close()
        # A reply proves the worker is up, and so is its watcher (started
        # before the loop) with the intermediate process as its parent.
        payload = b'{"id":1,"command":"ping","args":{}}'
        os.write(req_w, len(payload).to_bytes(4, "big") + payload)
        self.assertTrue(select.select([rep_r], [], [], 10)[0], "worker did not answer")
        self.assertIn(b'"status":"ok"', os.read(rep_r, 65536))
        mid.stdin.close()
        self.assertEqual(mid.wait(10), 0)
        deadline = time.monotonic() + 5
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                self.fail("worker survived its parent")
            time.sleep(0.05)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")



class StdlibStreamHandling(StreamHandling):
    worker_env = {"DSPEX_WORKER_JSON": "json"}


if __name__ == "__main__":
    unittest.main()
