"""Tests of the commands of a Python worker (built-in, and a handler module's), spawned exactly as
the Rust NIF spawns it.

Run: python3 -m unittest discover -s test/python -v
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_harness import PYTHON_DIR, WorkerCase  # noqa: E402

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
        # A long name is quoted cut short.
        err = self.assertError(w.call("x" * 100_000), "UnknownCommand", "'xxxx")
        self.assertLess(len(err["message"]), 1000)

    def test_requests_naming_control_keys_are_answered_as_requests(self):
        # The pool's control frames are told apart by the key after the id; a short id and
        # an empty command once put a request's "credit" argument where a sniffer found it.
        for extra in ((), ("--concurrency", "4")):
            with self.subTest(extra=extra):
                w = self.spawn(extra_args=extra)
                for rid, key in ((1, "credit"), (2, "tool_result")):
                    # Compact, as the pool writes it.
                    w.send_raw(b'{"id":%d,"command":"","args":{"%s":1}}' % (rid, key.encode()))
                    reply = w.recv()
                    self.assertEqual(reply["id"], rid)
                    self.assertEqual(reply["error"]["type"], "UnknownCommand")
                self.assertTrue(w.call("echo", {"credit": 1, "tool_result": 2})["success"])

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


# The same worker tests again with the stdlib codec forced, so both JSON
# backends are covered wherever orjson happens to be installed.
_STDLIB = {"DSPEX_WORKER_JSON": "json"}


class StdlibBuiltinCommands(BuiltinCommands):
    worker_env = _STDLIB

    def test_ping_reports_stdlib(self):
        self.assertEqual(self.spawn().call("ping")["result"]["json"], "json")


class StdlibHandlerModule(HandlerModule):
    worker_env = _STDLIB


if __name__ == "__main__":
    unittest.main()
