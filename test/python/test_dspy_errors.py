"""How the DSPy commands fail: their error types and messages, secrets kept out of replies
and logs, and a worker without DSPy.

The DSPy tests need dspy (skipped without it; see dspy_harness.py); the "no DSPy" ones run
everywhere.
"""

import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dspy_harness import BAD_ARGS, DUMMY, ERR, HAVE_DSPY, Base  # noqa: E402


@unittest.skipUnless(HAVE_DSPY, "dspy is not installed in this python (use .venv/bin/python)")
class DSPyErrors(Base):
    def test_errors(self):
        w = self.spawn()
        self.ok(w, "create_program", {"program_id": "qa", "signature": "question -> answer"})
        self.fail(w, "execute_program", {"program_id": "qa", "inputs": {"question": "q"}},
                  ERR + "LMNotConfigured", "call configure_lm first")
        self.ok(w, "configure_lm", DUMMY)
        self.fail(w, "execute_program", {"program_id": "nope", "inputs": {}},
                  ERR + "ProgramNotFound", "'nope' not found")
        self.fail(w, "execute_program", {"inputs": {}}, BAD_ARGS, "program_id")
        self.fail(w, "execute_program", {"program_id": "qa", "inputs": {}},
                  BAD_ARGS, "missing question")
        self.fail(w, "execute_program", {"program_id": "qa", "inputs": {"question": "q", "lm": 1}},
                  BAD_ARGS, "unknown lm")
        self.fail(w, "execute_program", {"program_id": "qa", "inputs": "q"}, BAD_ARGS)
        bad_signatures = [
            ("question answer", "->"),
            ("question -> ", None),
            ("-> answer", None),
            ("1x -> answer", None),
            (42, "must be a string"),
            (None, "must be a string"),
            ({"inputs": [], "outputs": ["answer"]}, "inputs"),
            ({"inputs": ["question"]}, "outputs"),
            ({"inputs": ["bad name"], "outputs": ["answer"]}, "'bad name'"),
            ({"inputs": ["_x"], "outputs": ["answer"]}, "'_x'"),
            ({"inputs": ["q"], "outputs": ["q"]}, "twice"),
            ({"inputs": [{"name": "q", "type": "no such type"}], "outputs": ["a"]}, "unsupported type"),
            ({"inputs": [{"description": "nameless"}], "outputs": ["a"]}, "name"),
            ("config -> answer", "config"),
        ]
        for signature, part in bad_signatures:
            with self.subTest(signature=signature):
                self.fail(w, "create_program", {"program_id": "bad", "signature": signature},
                          ERR + "InvalidSignature", part)
        self.fail(w, "create_program", {"program_id": "bad", "program_type": "ChainOfThought",
                                        "signature": "question -> reasoning, answer"},
                  ERR + "InvalidSignature", "reasoning")
        self.fail(w, "create_program", {"signature": "q -> a", "program_type": "ProgramOfThought"},
                  BAD_ARGS, "unsupported program_type")
        self.fail(w, "create_program", {"signature": "q -> a", "program_type": "ReAct"},
                  BAD_ARGS, 'ReAct needs "tools"')
        self.fail(w, "create_program", {"signature": "q -> a", "program_type": "BestOfN"},
                  BAD_ARGS, '"reward"')
        self.fail(w, "create_program", {"signature": "q -> a", "session_id": 7},
                  BAD_ARGS, "session_id")
        self.fail(w, "configure_lm", {}, BAD_ARGS, '"model"')
        self.fail(w, "configure_lm", {"model": "dummy", "answers": ["Paris"]}, BAD_ARGS, "answers")
        listing = self.ok(w, "list_programs")
        self.assertEqual([p["program_id"] for p in listing["programs"]], ["qa"])
        # The worker still serves, and the old LM is still set.
        x = self.ok(w, "execute_program", {"program_id": "qa", "inputs": {"question": "q"}})
        self.assertEqual(x["outputs"], {"answer": "Paris"})

    def test_api_key_never_in_replies_or_logs(self):
        arg_secret = "sk-test-ARGSECRET-0123456789"
        env_secret = "sk-test-ENVSECRET-9876543210"
        w = self.spawn(env={"OPENAI_API_KEY": env_secret})
        raw = []

        def call(command, args):
            w.send(command, args)
            data = w.recv_raw(timeout=60)
            raw.append(data)
            return data

        r = call("configure_lm", {"model": "openai/gpt-4o-mini", "api_key": arg_secret,
                                  "temperature": 0.2, "max_tokens": 50, "num_retries": 0,
                                  "api_base": "http://127.0.0.1:9/v1",  # refused at once: offline
                                  "extra_headers": {"Authorization": "Bearer " + arg_secret}})
        self.assertIn(b'"api_key":"[REDACTED]"', r.replace(b" ", b""))
        self.assertIn(b'"max_tokens":50', r.replace(b" ", b""))
        call("create_program", {"program_id": "qa", "signature": "question -> answer"})
        call("execute_program", {"program_id": "qa", "inputs": {"question": "q"}})  # fails: no server
        # Errors whose text contains a secret are redacted.
        for secret in (arg_secret, env_secret):
            call("create_program", {"program_id": "x", "signature": secret + " answer"})
            self.assertIn(b"RedactedError", raw[-1])
        call("get_stats", {})
        call("configure_lm", {"model": "dummy", "api_key": arg_secret})
        call("list_programs", {})
        w.close()
        logs = w.stdout_text() + w.stderr_text()
        for secret in (arg_secret, env_secret):
            for data in raw:
                self.assertNotIn(secret.encode(), data)
            self.assertNotIn(secret, logs)


class NoDSPy(Base):
    """Without DSPy the DSPy commands fail clearly; everything else keeps working."""

    def check_unavailable(self, w, message_part):
        self.assertFalse(self.ok(w, "ping")["dspy_available"])
        for command, args in (("configure_lm", DUMMY),
                              ("create_program", {"signature": "question -> answer"}),
                              ("execute_program", {"program_id": "p", "inputs": {}})):
            err = self.fail(w, command, args, ERR + "DSPyUnavailable", message_part)
            self.assertNotIn("\n  File", err["message"])
        self.assertEqual(self.ok(w, "echo", {"x": [1, "é"]}), {"x": [1, "é"]})
        s = self.ok(w, "get_stats")
        self.assertEqual((s["dspy_available"], s["dspy_loaded"], s["lm_configured"],
                          s["programs_count"]), (False, False, False, 0))
        self.assertEqual(self.ok(w, "list_programs", {"session_id": "s"})["total_count"], 0)
        self.assertEqual(self.ok(w, "cleanup_session", {"session_id": "s"})["programs_removed"], 0)
        self.assertEqual(self.ok(w, "reset_state")["programs_cleared"], 0)
        self.fail(w, "get_program_info", {"program_id": "p"}, ERR + "ProgramNotFound")

    def test_disabled_by_environment(self):
        tmp = self.handler_dir("nodspy_handlers", """
            def double(args):
                return args["n"] * 2
        """)
        w = self.spawn(env={"DSPEX_DISABLE_DSPY": "1"}, handlers="nodspy_handlers",
                       pythonpath=[tmp])
        self.check_unavailable(w, "DSPEX_DISABLE_DSPY")
        self.assertEqual(self.ok(w, "double", {"n": 21}), 42)

    def test_python_without_dspy(self):
        python = _python_without_dspy()
        if python is None:
            self.skipTest("no python3 without dspy found on this machine")
        w = self.spawn(python=python)
        self.check_unavailable(w, "DSPy is not installed in ")
        msg = self.fail(w, "create_program", {"signature": "q -> a"}, ERR + "DSPyUnavailable")["message"]
        self.assertIn("run bin/setup or pip install dspy==3.4.1", msg)


def _python_without_dspy():
    """A python3 that cannot find dspy (the system one, usually), or None."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('dspy') is not None)"
    seen = set()
    for candidate in ("python3", "/usr/bin/python3", "/usr/local/bin/python3"):
        path = shutil.which(candidate)
        if not path or path in seen:
            continue
        seen.add(path)
        try:
            ok = subprocess.run([path, "-c", probe], env={k: v for k, v in os.environ.items()
                                                            if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
                                capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            continue
        if ok:
            return path
    return None


if __name__ == "__main__":
    unittest.main()
