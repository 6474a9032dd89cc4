"""Tests of the Python worker, spawned exactly as the Rust NIF spawns it.

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
from worker_harness import PYTHON_DIR, Worker, WorkerCase  # noqa: E402

HANDLER_MODULE = "dspex_test_handlers"
HANDLER_SOURCE = textwrap.dedent('''
    """Handlers used by test_bridge.py."""
    import os
    import subprocess
    import sys
    import threading
    import time
    from os.path import join          # imported: must NOT become a command

    print("handler module imported")  # import-time print goes to stdout too


    class MyError(Exception):
        pass


    def shout(args):
        print("hello from handler", args.get("x"))
        print("warning from handler", file=sys.stderr)
        os.write(1, b"raw bytes on fd 1\\n")   # as a C extension would
        sys.stdout.write("no newline at all")   # must still not corrupt anything
        return {"y": args["x"].upper()}


    def boom(args):
        return _inner(args)


    def _inner(args):
        raise ValueError("bad value: %s" % args.get("n"))


    def custom(args):
        raise MyError("mine")


    def unserialisable(args):
        return {"obj": object()}


    def not_a_number(args):
        return {"x": [1.0, float("nan")]}


    def with_none(args):
        return {"x": None, "fits": 2 ** 64 - 1, 1: "int key"}


    def big_int(args):
        return {"big": [2 ** 70]}


    def big(args):
        return "x" * args["n"]


    def exit_now(args):
        raise SystemExit(7)


    def interrupt(args):
        raise KeyboardInterrupt("stop that")


    def hang_thread(args):
        # A non-daemon thread that never ends: must not keep the worker alive.
        threading.Thread(target=time.sleep, args=(3600,)).start()
        return True


    def child(args):
        probe = ("import os\\n"
                 "for fd in (3, 4):\\n"
                 "    try:\\n"
                 "        os.fstat(fd)\\n"
                 "        print(fd)\\n"
                 "    except OSError:\\n"
                 "        pass\\n")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        code = subprocess.run([sys.executable, "-c", "raise SystemExit(5)"]).returncode
        return {"fds": out.stdout.split(), "code": code}


    def slow(args):
        time.sleep(args["s"])
        return "done"


    def _private(args):
        return "private"
''')


class WorkerTestCase(WorkerCase):
    """worker_env: see the Stdlib* classes."""


class BuiltinCommands(WorkerTestCase):
    def test_ping(self):
        w = self.spawn(worker_id="3")
        reply = w.call("ping")
        self.assertTrue(reply["success"], reply)
        r = reply["result"]
        self.assertEqual(list(r), ["status", "worker_id", "pid", "uptime", "python",
                                   "json", "dspy_available"])
        self.assertEqual(r["status"], "ok")
        self.assertEqual(r["worker_id"], "3")
        self.assertEqual(r["pid"], w.pid)
        self.assertIsInstance(r["uptime"], float)
        self.assertGreaterEqual(r["uptime"], 0.0)
        self.assertEqual(r["python"], "%d.%d.%d" % sys.version_info[:3])
        self.assertIn(r["json"], ("json", "orjson"))
        self.assertIsInstance(r["dspy_available"], bool)

    def test_echo_and_reply_shape(self):
        w = self.spawn()
        args = {"a": 1, "b": [1, 2.5, None, True, "s"], "c": {"d": {}}}
        rid = w.send("echo", args, rid=42)
        raw = w.recv_raw()
        self.assertTrue(raw.startswith(b'{"id":42,'), raw)  # "id" is the first key
        self.assertEqual(json.loads(raw), {"id": 42, "success": True, "result": args})
        self.assertEqual(rid, 42)

    def test_unicode(self):
        w = self.spawn()
        text = "héllo ✓ 中文 🐍 \u0000 \"quoted\" \\ \n"
        rid = w.send("echo", {"t": text, "ключ": "значение"})
        raw = w.recv_raw()
        self.assertIn("🐍".encode("utf-8"), raw)  # raw UTF-8, not \\u escapes
        reply = json.loads(raw)
        self.assertEqual(reply["id"], rid)
        self.assertEqual(reply["result"], {"t": text, "ключ": "значение"})

    def test_pipelined_requests_answered_in_order(self):
        w = self.spawn()
        ids = [w.send("echo", {"i": i}, rid=1000 + i) for i in range(50)]
        replies = [w.recv() for _ in ids]
        self.assertEqual([r["id"] for r in replies], ids)
        self.assertEqual([r["result"]["i"] for r in replies], list(range(50)))

    def test_large_frame_round_trip(self):
        w = self.spawn()
        blob = "z" * (3 * 1024 * 1024)  # far above the 64 KiB pipe buffer
        reply = w.call("echo", {"blob": blob}, timeout=30)
        self.assertEqual(reply["result"]["blob"], blob)

    def test_get_stats(self):
        w = self.spawn(worker_id="7")
        w.call("ping")
        w.call("echo", {"x": 1})
        w.call("echo", {"x": 2})
        w.call("nope")
        reply = w.call("get_stats")
        self.assertTrue(reply["success"], reply)
        s = reply["result"]
        self.assertEqual(s["worker_id"], "7")
        self.assertEqual(s["pid"], w.pid)
        self.assertIsInstance(s["uptime"], float)
        self.assertEqual(s["requests"], 5)  # this get_stats included
        self.assertEqual(s["errors"], 1)
        self.assertEqual(s["commands"], {"ping": 1, "echo": 2, "get_stats": 1})

    def test_unknown_command(self):
        w = self.spawn()
        err = self.assertError(w.call("no_such_command"), "UnknownCommand",
                               "'no_such_command'")
        for name in ("echo", "get_stats", "ping"):
            self.assertIn(name, err["message"])
        self.assertTrue(w.call("ping")["success"])  # still serving

    def test_not_started_by_pool(self):
        # Without fds 3/4 the worker refuses to run instead of misbehaving.
        proc = subprocess.run(
            [sys.executable, os.path.join(PYTHON_DIR, "dspex_worker.py"),
             "--worker-id", "1", "--pool", "p"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
            close_fds=True)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("fds 3 and 4", proc.stderr)


class HandlerModule(WorkerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="dspex_handlers_")
        with open(os.path.join(cls.tmp, HANDLER_MODULE + ".py"), "w") as f:
            f.write(HANDLER_SOURCE)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def spawn_handlers(self, **kw):
        return self.spawn(handlers=HANDLER_MODULE, pythonpath=[self.tmp], **kw)

    def test_print_does_not_corrupt_frames(self):
        w = self.spawn_handlers()
        reply = w.call("shout", {"x": "abc"})
        self.assertEqual(reply["result"], {"y": "ABC"})
        w.wait_for_line("stdout", "hello from handler abc")
        w.wait_for_line("stdout", "raw bytes on fd 1")
        w.wait_for_line("stderr", "warning from handler")
        # The protocol keeps working after all that output.
        self.assertEqual(w.call("echo", {"k": "v"})["result"], {"k": "v"})
        w.close()
        self.assertIn("handler module imported", w.stdout_text())
        self.assertIn("no newline at all", w.stdout_text())

    def test_exception_reply(self):
        w = self.spawn_handlers()
        err = self.assertError(w.call("boom", {"n": 3}), "ValueError", "bad value: 3")
        self.assertEqual(err["message"], "bad value: 3")
        tb = err["traceback"]
        self.assertTrue(tb.startswith("Traceback (most recent call last):"), tb)
        self.assertIn("in boom", tb)
        self.assertIn("in _inner", tb)
        self.assertIn('raise ValueError("bad value: %s" % args.get("n"))', tb)
        self.assertNotIn("dspex_bridge", tb)  # the worker's own frame is dropped
        self.assertTrue(tb.rstrip().endswith("ValueError: bad value: 3"), tb)

    def test_custom_exception_type_is_qualified(self):
        w = self.spawn_handlers()
        self.assertError(w.call("custom"), HANDLER_MODULE + ".MyError", "mine")

    def test_missing_arg_is_a_key_error(self):
        w = self.spawn_handlers()
        self.assertError(w.call("shout", {}), "KeyError", "'x'")

    def test_non_serialisable_result(self):
        w = self.spawn_handlers()
        err = self.assertError(w.call("unserialisable"), "SerializationError",
                               "'unserialisable'")
        self.assertIn("object", err["message"])
        self.assertTrue(w.call("ping")["success"])

    def test_nan_is_refused(self):
        w = self.spawn_handlers()
        self.assertError(w.call("not_a_number"), "SerializationError", "float")

    def test_none_bigint_and_int_keys(self):
        w = self.spawn_handlers()
        reply = w.call("with_none")
        self.assertEqual(reply["result"], {"x": None, "fits": 2 ** 64 - 1, "1": "int key"})
        self.assertError(w.call("big_int"), "SerializationError", "beyond 64 bits")

    def test_reply_over_max_frame(self):
        w = self.spawn_handlers(max_frame=4096)
        self.assertEqual(w.call("big", {"n": 100})["result"], "x" * 100)
        err = self.assertError(w.call("big", {"n": 5000}), "FrameTooLarge", "4096")
        self.assertIn("'big'", err["message"])
        self.assertTrue(w.call("ping")["success"])

    def test_private_and_imported_functions_are_not_commands(self):
        w = self.spawn_handlers()
        for name in ("_private", "join", "MyError", "_inner"):
            self.assertError(w.call(name), "UnknownCommand")
        err = self.assertError(w.call("nope"), "UnknownCommand")
        for name in ("boom", "shout", "ping", "echo"):
            self.assertIn(name, err["message"])

    def test_system_exit_exits_the_worker(self):
        w = self.spawn_handlers()
        w.send("exit_now")
        self.assertEqual(w.wait(10), 7)

    def test_keyboard_interrupt_is_an_error_reply(self):
        w = self.spawn_handlers()
        self.assertError(w.call("interrupt"), "KeyboardInterrupt", "stop that")
        self.assertTrue(w.call("ping")["success"])

    def test_subprocesses_get_no_protocol_fds_and_real_exit_codes(self):
        w = self.spawn_handlers()
        r = w.call("child")["result"]
        self.assertEqual(r["code"], 5)
        self.assertEqual(r["fds"], [])  # neither fd 3 nor fd 4 is open in the child

    def test_eof_exits_despite_stuck_non_daemon_thread(self):
        w = self.spawn_handlers()
        self.assertTrue(w.call("hang_thread")["result"])
        w.close_requests()
        self.assertEqual(w.wait(5), 0)

    def test_eof_while_busy_exits_after_reply(self):
        w = self.spawn_handlers()
        rid = w.send("slow", {"s": 0.3})
        w.close_requests()
        self.assertEqual(w.recv()["id"], rid)  # in-flight request still answered
        self.assertEqual(w.wait(5), 0)


class StartupFailures(WorkerTestCase):
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


class StreamHandling(WorkerTestCase):
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


# The same worker tests again with the stdlib codec forced, so both JSON
# backends are covered wherever orjson happens to be installed.
_STDLIB = {"DSPEX_WORKER_JSON": "json"}


class StdlibBuiltinCommands(BuiltinCommands):
    worker_env = _STDLIB

    def test_ping_reports_stdlib(self):
        self.assertEqual(self.spawn().call("ping")["result"]["json"], "json")


class StdlibHandlerModule(HandlerModule):
    worker_env = _STDLIB


class StdlibStreamHandling(StreamHandling):
    worker_env = _STDLIB


class Registry(unittest.TestCase):
    """How a built-in command file (e.g. dspex_bridge/dspy_commands/) plugs in."""

    def setUp(self):
        sys.path.insert(0, PYTHON_DIR)
        self.addCleanup(sys.path.remove, PYTHON_DIR)
        from dspex_bridge import commands
        self.commands = commands
        saved = dict(commands._REGISTRY)
        self.addCleanup(lambda: (commands._REGISTRY.clear(), commands._REGISTRY.update(saved)))

    def test_extension_module_registers_with_the_decorator(self):
        tmp = tempfile.mkdtemp(prefix="dspex_ext_")
        self.addCleanup(shutil.rmtree, tmp, True)
        with open(os.path.join(tmp, "dspex_test_ext_commands.py"), "w") as f:
            f.write(textwrap.dedent("""
                from dspex_bridge.commands import command

                @command
                def ext_plain(args):
                    return "plain"

                @command("ext.named")
                def _named(args):
                    return "named"
            """))
        sys.path.insert(0, tmp)
        self.addCleanup(sys.path.remove, tmp)
        self.addCleanup(sys.modules.pop, "dspex_test_ext_commands", None)
        c = self.commands
        saved_ext = c.EXTENSION_MODULES
        c.EXTENSION_MODULES = ("dspex_test_ext_commands", "dspex_bridge.no_such_file")
        self.addCleanup(setattr, c, "EXTENSION_MODULES", saved_ext)
        self.assertEqual(c.load_extensions(), ["dspex_test_ext_commands"])
        table = c.builtins()
        self.assertEqual(table["ext_plain"]({}), "plain")
        self.assertEqual(table["ext.named"]({}), "named")
        self.assertIn("ping", table)

    def test_names_are_taken_once(self):
        c = self.commands
        with self.assertRaises(c.CommandClash):
            c.register("ping", lambda args: None)


class ErrorDetails(unittest.TestCase):
    """What a command may say of its error beyond its type is checked before it is sent."""

    def setUp(self):
        sys.path.insert(0, PYTHON_DIR)
        self.addCleanup(sys.path.remove, PYTHON_DIR)
        from dspex_bridge import errors
        self.errors = errors

    def error(self, details):
        exc = RuntimeError("x")
        exc.dspex_details = details
        return exc

    def test_kind_retryable_and_retry_after_pass(self):
        got = self.errors.details(self.error({"kind": "lm_rate_limited", "retryable": True,
                                              "retry_after": 2.5, "other": "dropped"}))
        self.assertEqual(got, {"kind": "lm_rate_limited", "retryable": True, "retry_after": 2.5})

    def test_anything_else_is_dropped(self):
        for bad in (None, "lm_timeout", {"kind": "Not A Kind"}, {"kind": "x" * 65}, {}):
            self.assertIsNone(self.errors.details(self.error(bad)), bad)
        got = self.errors.details(self.error({"kind": "lm_timeout", "retryable": "yes",
                                              "retry_after": True}))
        self.assertEqual(got, {"kind": "lm_timeout"})
        self.assertIsNone(self.errors.details(RuntimeError("plain")))


class BufferedFrames(unittest.TestCase):
    """The reader of a worker serving many requests: several frames per read, frames split
    across reads, frames larger than its buffer, and the size cap."""

    def setUp(self):
        sys.path.insert(0, PYTHON_DIR)
        self.addCleanup(sys.path.remove, PYTHON_DIR)
        from dspex_bridge import protocol
        self.protocol = protocol
        self.r, self.w = os.pipe()
        self.addCleanup(os.close, self.r)

    def frame(self, body):
        return len(body).to_bytes(4, "big") + body

    def write_in_thread(self, data, piece):
        import threading

        def write():
            for i in range(0, len(data), piece):
                os.write(self.w, data[i:i + piece])
            os.close(self.w)

        thread = threading.Thread(target=write)
        thread.start()
        self.addCleanup(thread.join)

    def test_frames_come_back_whole_and_in_order(self):
        bodies = [b"a", b"", b"x" * 70_000, b"b" * 10, b"y" * 300_000, b"c"]
        data = b"".join(self.frame(b) for b in bodies)
        for piece in (len(data), 7, 4096):
            with self.subTest(piece=piece):
                self.setUp()
                read_frame = self.protocol.buffered_frame_reader(self.r, 1 << 20, chunk=1024)
                self.write_in_thread(data, piece)
                got = []
                while (body := read_frame()) is not None:
                    got.append(bytes(body))
                self.assertEqual(got, bodies)

    def test_pending_says_whether_a_whole_frame_is_buffered(self):
        read_frame = self.protocol.buffered_frame_reader(self.r, 1 << 20)
        os.write(self.w, self.frame(b"one") + self.frame(b"two") + self.frame(b"three")[:5])
        self.assertFalse(read_frame.pending())  # nothing read yet
        self.assertEqual(read_frame(), b"one")
        self.assertTrue(read_frame.pending())
        self.assertEqual(read_frame(), b"two")
        self.assertFalse(read_frame.pending())  # "three" is not whole
        os.write(self.w, self.frame(b"three")[5:])
        os.close(self.w)
        self.assertEqual(read_frame(), b"three")
        self.assertIsNone(read_frame())

    def test_a_frame_over_the_cap_is_refused_before_its_body_is_read(self):
        read_frame = self.protocol.buffered_frame_reader(self.r, 100)
        os.write(self.w, (101).to_bytes(4, "big"))
        os.close(self.w)
        with self.assertRaises(self.protocol.RequestTooLarge):
            read_frame()


class JsonBackends(unittest.TestCase):
    """The codec gives the stdlib's answers whichever backend is active."""

    def setUp(self):
        sys.path.insert(0, PYTHON_DIR)
        self.addCleanup(sys.path.remove, PYTHON_DIR)
        import importlib
        from dspex_bridge import codec
        self.codecs = [codec]
        # A second copy of the module with the stdlib forced.
        os.environ["DSPEX_WORKER_JSON"] = "json"
        try:
            spec = importlib.util.spec_from_file_location("codec_stdlib", codec.__file__)
            std = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(std)
        finally:
            del os.environ["DSPEX_WORKER_JSON"]
        self.assertEqual(std.BACKEND, "json")
        self.codecs.append(std)

    def test_same_answers_as_stdlib(self):
        for c in self.codecs:
            with self.subTest(backend=c.BACKEND):
                self.check(c)

    def check(self, c):
        for value in ({"a": [1, 2.5, None, True, "é🐍"]}, {1: "x", None: "y", 2.5: "z"},
                      2 ** 64 - 1, -(2 ** 63), "null", [], {}, 1e300, "\u2028",
                      "12345678901234567890123"):
            self.assertEqual(json.loads(c.dumps(value)), json.loads(c.std_dumps(value)), value)
        self.assertEqual(c.dumps({"é": 1}), '{"é":1}'.encode())  # compact, raw UTF-8
        for bad in (float("nan"), [float("inf")], {"x": object()}, "\ud800",
                    {(1, 2): "tuple key"}, 2 ** 64, [{"n": -(2 ** 63) - 1}]):
            with self.assertRaises((TypeError, ValueError), msg=repr(bad)):
                c.dumps(bad)
        self.assertEqual(c.loads(b'{"n": 18446744073709551615, "m": -9223372036854775808}'),
                         {"n": 2 ** 64 - 1, "m": -(2 ** 63)})
        self.assertEqual(c.loads(bytearray(b'{"s": "\\u00e9"}')), {"s": "é"})
        with self.assertRaises(ValueError):
            c.loads(b'{"a": ')
        with self.assertRaises(ValueError):
            c.loads(b'\xff')


if __name__ == "__main__":
    unittest.main()
