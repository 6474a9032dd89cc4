"""Start a worker exactly as the Rust NIF does, and talk to it.

fd 3 = read end of the request pipe, fd 4 = write end of the reply pipe,
fd 0 = /dev/null, fds 1/2 = pipes read line by line (as Rust feeds Logger),
PYTHONUNBUFFERED=1, PYTHONPATH = the user directories, every other fd closed.
Used by the tests and by ``bench_roundtrip.py``.
"""

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

# The bridge itself, in the source tree: <repo>/priv/python.
PYTHON_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "priv", "python")
WORKER = os.path.join(PYTHON_DIR, "dspex_worker.py")


class Worker:
    def __init__(self, *, worker_id="3", pool="test_pool", handlers=None,
                 max_frame=None, pythonpath=(), env=None, python=None,
                 extra_args=(), argv=None):
        # `argv` runs another program on the same plumbing (the benchmark's baseline).
        if argv is None:
            argv = [python or sys.executable, WORKER, "--worker-id", worker_id,
                    "--pool", pool]
            if handlers:
                argv += ["--handlers", handlers]
            if max_frame is not None:
                argv += ["--max-frame", str(max_frame)]
            argv += list(extra_args)

        child_env = {k: v for k, v in os.environ.items()
                     if k not in ("PYTHONPATH", "DSPEX_WORKER_JSON")}
        child_env["PYTHONUNBUFFERED"] = "1"
        if pythonpath:
            child_env["PYTHONPATH"] = os.pathsep.join(pythonpath)
        if env:
            child_env.update(env)

        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()

        def preexec():
            # Move both ends above 4 first so one dup2 cannot clobber the
            # other; dup2 clears close-on-exec on fds 3 and 4.
            hi_r = fcntl.fcntl(req_r, fcntl.F_DUPFD, 10)
            hi_w = fcntl.fcntl(rep_w, fcntl.F_DUPFD, 10)
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            preexec_fn=preexec,
            pass_fds=(3, 4),  # close_fds runs after preexec_fn: keep these two
        )
        os.close(req_r)
        os.close(rep_w)
        self.req_w = req_w
        self.rep_r = rep_r
        self.pid = self.proc.pid
        self.next_id = 1

        self.stdout_lines = []
        self.stderr_lines = []
        self._lines_cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines), daemon=True),
        ]
        for t in self._readers:
            t.start()

    # -- stdout / stderr, as Rust's line readers see them ---------------------

    def _pump(self, stream, lines):
        for raw in iter(stream.readline, b""):
            with self._lines_cond:
                lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._lines_cond.notify_all()
        stream.close()

    def wait_for_line(self, which, needle, timeout=5.0):
        lines = self.stdout_lines if which == "stdout" else self.stderr_lines
        deadline = time.monotonic() + timeout
        with self._lines_cond:
            while not any(needle in line for line in lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{needle!r} not seen on {which}: {lines!r}")
                self._lines_cond.wait(left)

    def stderr_text(self, timeout=5.0):
        """All of stderr, once the process has exited and the pipe is drained."""
        self._readers[1].join(timeout)
        return "\n".join(self.stderr_lines)

    def stdout_text(self, timeout=5.0):
        self._readers[0].join(timeout)
        return "\n".join(self.stdout_lines)

    # -- frames ------------------------------------------------------------

    def send_raw(self, payload: bytes, length=None):
        n = len(payload) if length is None else length
        self._write_all(n.to_bytes(4, "big") + payload)

    def _write_all(self, data):
        view = memoryview(data)
        while view:
            n = os.write(self.req_w, view)
            view = view[n:]

    def send(self, command, args=None, rid=None):
        if rid is None:
            rid = self.next_id
            self.next_id += 1
        payload = json.dumps({"id": rid, "command": command,
                              "args": {} if args is None else args},
                             ensure_ascii=False).encode("utf-8")
        self.send_raw(payload)
        return rid

    def _read_exact(self, n, deadline):
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rep_r], [], [], left)[0]:
                raise TimeoutError(f"no reply within the timeout (stderr: {self.stderr_lines!r})")
            chunk = os.read(self.rep_r, n - len(buf))
            if not chunk:
                raise EOFError(f"reply stream closed (stderr: {self.stderr_lines!r})")
            buf += chunk
        return bytes(buf)

    def recv_raw(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        n = int.from_bytes(self._read_exact(4, deadline), "big")
        return self._read_exact(n, deadline)

    def recv(self, timeout=10.0):
        return json.loads(self.recv_raw(timeout))

    def call(self, command, args=None, timeout=10.0):
        rid = self.send(command, args)
        reply = self.recv(timeout)
        assert reply["id"] == rid, (reply, rid)
        return reply

    # -- lifetime -----------------------------------------------------------

    def close_requests(self):
        if self.req_w is not None:
            os.close(self.req_w)
            self.req_w = None

    def wait(self, timeout=5.0):
        return self.proc.wait(timeout)

    def close(self):
        self.close_requests()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.rep_r is not None:
            os.close(self.rep_r)
            self.rep_r = None
        for t in self._readers:
            t.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class WorkerCase(unittest.TestCase):
    """A test case that spawns workers and closes them when the test ends."""

    #: Extra environment for every worker of the class.
    worker_env = None

    def handler_dir(self, module, source):
        """A directory, removed after the test, holding handler module `module` (`source`
        dedented): pass it as `pythonpath=[dir]` with `handlers=module`."""
        tmp = tempfile.mkdtemp(prefix=f"dspex_{module}_")
        self.addCleanup(shutil.rmtree, tmp, True)
        with open(os.path.join(tmp, f"{module}.py"), "w") as f:
            f.write(textwrap.dedent(source))
        return tmp

    def spawn(self, **kw):
        if self.worker_env:
            kw["env"] = {**self.worker_env, **kw.get("env", {})}
        w = Worker(**kw)
        self.addCleanup(w.close)
        return w

    def assertError(self, reply, etype, message_part=None):
        """A failure reply of type `etype` (whose message contains `message_part`)."""
        self.assertFalse(reply["success"], reply)
        err = reply["error"]
        self.assertTrue({"type", "message", "traceback"} <= set(err), err)
        # What the pool may classify the error by (see errors.details), and nothing else.
        self.assertTrue(set(err) <= {"type", "message", "traceback", "kind", "retryable",
                                     "retry_after"}, err)
        self.assertEqual(err["type"], etype, err)
        if message_part is not None:
            self.assertIn(message_part, err["message"])
        self.assertIsInstance(err["traceback"], str)
        return err
