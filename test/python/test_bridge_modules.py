"""In-process tests of the bridge's modules, no worker spawned: the command registry, error
details, the buffered frame reader, and the JSON codecs.

Run: python3 -m unittest discover -s test/python -v
"""

import json
import os
import shutil
import sys
import tempfile
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_harness import PYTHON_DIR  # noqa: E402


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
                      "12345678901234567890123",
                      # Large outputs, told clean by a walk or a search for null.
                      {"big": "x" * 10000, "none": None}, [{"n": None}] * 1000,
                      [[1.5]] * 2000):
            self.assertEqual(json.loads(c.dumps(value)), json.loads(c.std_dumps(value)), value)
        self.assertEqual(c.dumps({"é": 1}), '{"é":1}'.encode())  # compact, raw UTF-8
        for bad in (float("nan"), [float("inf")], {"x": object()}, "\ud800",
                    {(1, 2): "tuple key"}, 2 ** 64, [{"n": -(2 ** 63) - 1}],
                    # A non-finite float in a large output: found by the walk, or beyond
                    # its reach and found by a search for null.
                    ["x" * 10000, float("nan")], [float("-inf")] + list(range(2000)),
                    [float("nan")] + [{"n": None}] * 1000, [float("inf")] + [[1]] * 2000):
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
