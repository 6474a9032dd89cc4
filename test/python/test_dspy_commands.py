"""Tests of the DSPy commands (dspex_bridge/dspy_commands/), offline with a DummyLM.

Workers are spawned exactly as the Rust NIF spawns them (worker_harness.py).
The DSPy tests need dspy in the interpreter running the tests:

    .venv/bin/python -m unittest discover -s test/python -v

Under a python without dspy they are skipped, and the "no DSPy" tests still run.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_harness import PYTHON_DIR, Worker, WorkerCase  # noqa: E402

HAVE_DSPY = importlib.util.find_spec("dspy") is not None
ERR = "dspex_bridge.dspy_commands."
DUMMY = {"model": "dummy", "answers": [{"answer": "Paris"}, {"answer": "Rome"}]}
QA_DICT = {
    "inputs": [{"name": "question", "description": "a question about geography"}],
    "outputs": [{"name": "answer", "description": "a short answer", "type": "string"}],
}


class Base(WorkerCase):

    def ok(self, w, command, args=None):
        reply = w.call(command, args or {}, timeout=60)
        self.assertTrue(reply["success"], reply)
        return reply["result"]

    def fail(self, w, command, args, etype, message_part=None):
        return self.assertError(w.call(command, args, timeout=60), etype, message_part)


@unittest.skipUnless(HAVE_DSPY, "dspy is not installed in this python (use .venv/bin/python)")
class DSPyCommands(Base):
    def configured(self, lm=DUMMY, **kw):
        w = self.spawn(**kw)
        result = self.ok(w, "configure_lm", lm)
        return w, result

    def test_configure_dummy(self):
        w, r = self.configured()
        self.assertEqual(r, {"status": "configured", "model": "dummy", "provider": "dummy",
                             "temperature": None, "options": {}, "mode": "cycle", "answers": 2})
        s = self.ok(w, "get_stats")
        self.assertTrue(s["lm_configured"])
        self.assertEqual(s["model"], "dummy")
        self.assertTrue(s["dspy_loaded"])
        self.assertEqual(s["dspy_version"], "3.4.1")

    def test_predict_from_string_signature(self):
        w, _ = self.configured()
        r = self.ok(w, "create_program", {"program_id": "qa", "signature": "question -> answer"})
        self.assertEqual(r["program_id"], "qa")
        self.assertEqual(r["status"], "created")
        self.assertFalse(r["replaced"])
        self.assertIsNone(r["session_id"])
        self.assertEqual(r["program_type"], "Predict")
        self.assertEqual(r["signature_string"], "question -> answer")
        self.assertEqual(r["signature"]["inputs"],
                         [{"name": "question", "description": None, "type": "str"}])
        self.assertEqual(r["signature"]["outputs"],
                         [{"name": "answer", "description": None, "type": "str"}])
        x = self.ok(w, "execute_program", {"program_id": "qa", "inputs": {"question": "France?"}})
        self.assertEqual(set(x), {"program_id", "outputs", "execution_time", "usage", "cached"})
        self.assertIsInstance(x["usage"], dict)
        self.assertIsInstance(x["cached"], bool)
        self.assertEqual(x["program_id"], "qa")
        self.assertEqual(x["outputs"], {"answer": "Paris"})
        self.assertIsInstance(x["execution_time"], float)
        self.assertGreater(x["execution_time"], 0.0)

    def test_chain_of_thought_from_v2_dict_signature(self):
        w, _ = self.configured()
        # DSPex V2's create_program keys: "id", "program_type": "chain_of_thought".
        r = self.ok(w, "create_program", {"id": "cot", "program_type": "chain_of_thought",
                                          "signature": {**QA_DICT, "description": "Answer briefly."}})
        self.assertEqual(r["program_id"], "cot")
        self.assertEqual(r["program_type"], "ChainOfThought")
        self.assertEqual(r["signature"], {
            "inputs": [{"name": "question", "description": "a question about geography",
                        "type": "str"}],
            "outputs": [{"name": "answer", "description": "a short answer", "type": "str"}],
            "instructions": "Answer briefly.",
        })
        x = self.ok(w, "execute_program", {"program_id": "cot", "inputs": {"question": "France?"}})
        self.assertEqual(x["outputs"], {"reasoning": "dummy reasoning", "answer": "Paris"})
        # An answer that brings its own reasoning keeps it.
        self.ok(w, "configure_lm", {"model": "dummy",
                                    "answers": [{"reasoning": "It is in Europe.", "answer": "Paris"}]})
        x = self.ok(w, "execute_program", {"program_id": "cot", "inputs": {"question": "France?"}})
        self.assertEqual(x["outputs"], {"reasoning": "It is in Europe.", "answer": "Paris"})

    def test_program_type_spellings_and_typed_fields(self):
        w, _ = self.configured({"model": "dummy", "answers": [{"n": 3, "ok": True, "tags": ["a"]}]})
        for i, spelling in enumerate(("Predict", "predict", "dspy.Predict", "ChainOfThought",
                                      "chain-of-thought", "cot")):
            r = self.ok(w, "create_program", {"program_id": f"p{i}", "type": spelling,
                                              "signature": "text -> n: int, ok: bool, tags: list[str]"})
            self.assertIn(r["program_type"], ("Predict", "ChainOfThought"))
            x = self.ok(w, "execute_program", {"program_id": f"p{i}", "inputs": {"text": "t"}})
            self.assertEqual(x["outputs"]["n"], 3)
            self.assertIs(x["outputs"]["ok"], True)
            self.assertEqual(x["outputs"]["tags"], ["a"])
        r = self.ok(w, "create_program", {"program_id": "typed", "signature": {
            "inputs": [{"name": "text", "type": "string"}],
            "outputs": [{"name": "n", "type": "integer"}, {"name": "label", "type": "Literal['x', 'y']"}]}})
        self.assertEqual([f["type"] for f in r["signature"]["outputs"]], ["int", "Literal['x', 'y']"])
        # "label" is not in the dummy's answer: a placeholder of the right type fills it.
        x = self.ok(w, "execute_program", {"program_id": "typed", "inputs": {"text": "t"}})
        self.assertEqual(x["outputs"], {"n": 3, "label": "x"})

    def test_dummy_answers_never_run_out(self):
        w, _ = self.configured()
        self.ok(w, "create_program", {"program_id": "qa", "signature": "question -> answer"})
        got = [self.ok(w, "execute_program", {"program_id": "qa", "inputs": {"question": f"q{i}"}})
               ["outputs"]["answer"] for i in range(60)]
        self.assertEqual(got, ["Paris", "Rome"] * 30)
        self.assertEqual(self.ok(w, "get_program_info", {"program_id": "qa"})["execution_count"], 60)

    def test_dummy_answers_by_prompt_with_default(self):
        w, r = self.configured({"model": "dummy", "default": {"answer": "I don't know"},
                                "answers": {"France": {"answer": "Paris"}, "Italy": {"answer": "Rome"}}})
        self.assertEqual((r["mode"], r["answers"]), ("by_prompt", 2))
        self.ok(w, "create_program", {"program_id": "qa", "signature": "question -> answer"})
        for question, answer in (("capital of Italy?", "Rome"), ("capital of France?", "Paris"),
                                 ("capital of Peru?", "I don't know")) * 5:
            x = self.ok(w, "execute_program", {"program_id": "qa", "inputs": {"question": question}})
            self.assertEqual(x["outputs"], {"answer": answer})

    def test_many_calls_concurrently_across_workers_and_sessions(self):
        answers = {"Paris", "Rome", "Lima"}
        workers = [self.spawn(worker_id=str(i)) for i in range(3)]
        failures = []

        def drive(w, index):
            try:
                self.ok(w, "configure_lm", {"model": "dummy",
                                            "answers": [{"answer": a} for a in sorted(answers)]})
                sessions = [f"w{index}-s{j}" for j in range(2)]
                for sid in sessions:
                    self.ok(w, "create_program", {"session_id": sid, "program_id": "qa",
                                                  "signature": "question -> answer",
                                                  "program_type": "ChainOfThought" if index % 2 else "Predict"})
                for i in range(100):
                    sid = sessions[i % 2]
                    x = self.ok(w, "execute_program", {"session_id": sid, "program_id": "qa",
                                                       "inputs": {"question": f"q{i}"}})
                    if x["outputs"]["answer"] not in answers:
                        failures.append(x)
                for sid in sessions:
                    info = self.ok(w, "get_program_info", {"session_id": sid, "program_id": "qa"})
                    if info["execution_count"] != 50:
                        failures.append(info)
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(repr(exc))

        threads = [threading.Thread(target=drive, args=(w, i)) for i, w in enumerate(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(failures, [])

    def test_list_info_delete(self):
        w, _ = self.configured()
        for pid in ("a", "b"):
            self.ok(w, "create_program", {"session_id": "s1", "program_id": pid,
                                          "signature": "question -> answer"})
        listing = self.ok(w, "list_programs", {"session_id": "s1"})
        self.assertEqual(listing["total_count"], 2)
        self.assertEqual(listing["session_id"], "s1")
        self.assertEqual([p["program_id"] for p in listing["programs"]], ["a", "b"])
        self.assertEqual([p["id"] for p in listing["programs"]], ["a", "b"])
        info = self.ok(w, "get_program_info", {"session_id": "s1", "program_id": "a"})
        self.assertEqual(set(info), {"program_id", "id", "session_id", "program_type", "signature",
                                     "signature_string", "created_at", "execution_count",
                                     "last_executed"})
        self.assertEqual((info["execution_count"], info["last_executed"]), (0, None))
        self.ok(w, "execute_program", {"session_id": "s1", "program_id": "a",
                                       "inputs": {"question": "q"}})
        info = self.ok(w, "get_program_info", {"session_id": "s1", "program_id": "a"})
        self.assertEqual(info["execution_count"], 1)
        self.assertGreaterEqual(info["last_executed"], info["created_at"])
        self.assertEqual(self.ok(w, "delete_program", {"session_id": "s1", "program_id": "a"}),
                         {"program_id": "a", "status": "deleted", "session_id": "s1"})
        self.fail(w, "get_program_info", {"session_id": "s1", "program_id": "a"},
                  ERR + "ProgramNotFound", "'a' not found in session 's1'")
        self.fail(w, "delete_program", {"session_id": "s1", "program_id": "a"},
                  ERR + "ProgramNotFound")
        self.assertEqual(self.ok(w, "list_programs", {"session_id": "s1"})["total_count"], 1)
        self.assertEqual(self.ok(w, "list_programs"), {"programs": [], "total_count": 0,
                                                       "session_id": None})

    def test_sessions_are_isolated(self):
        w, _ = self.configured({"model": "dummy", "answers": [{"answer": "A", "summary": "S"}]})
        self.ok(w, "create_program", {"session_id": "s1", "program_id": "p",
                                      "signature": "question -> answer"})
        self.ok(w, "create_program", {"session_id": "s2", "program_id": "p",
                                      "signature": "text -> summary"})
        self.ok(w, "create_program", {"session_id": "s1", "program_id": "only_in_s1",
                                      "signature": "question -> answer"})
        self.assertEqual(self.ok(w, "execute_program", {"session_id": "s1", "program_id": "p",
                                                        "inputs": {"question": "q"}})["outputs"],
                         {"answer": "A"})
        self.assertEqual(self.ok(w, "execute_program", {"session_id": "s2", "program_id": "p",
                                                        "inputs": {"text": "t"}})["outputs"],
                         {"summary": "S"})
        err = self.fail(w, "execute_program", {"session_id": "s2", "program_id": "only_in_s1",
                                               "inputs": {"text": "t"}}, ERR + "ProgramNotFound",
                        "'only_in_s1' not found in session 's2'")
        self.assertNotIn("s1", err["message"].replace("only_in_s1", ""))
        self.assertEqual(err["kind"], "program_not_found")
        self.fail(w, "execute_program", {"program_id": "p", "inputs": {"question": "q"}},
                  ERR + "ProgramNotFound", "anonymous namespace")
        self.assertEqual([p["signature_string"] for p in
                          self.ok(w, "list_programs", {"session_id": "s2"})["programs"]],
                         ["text -> summary"])
        s = self.ok(w, "get_stats")
        self.assertEqual((s["programs_count"], s["sessions_count"]), (3, 2))

    def test_create_program_replays_idempotently(self):
        w, _ = self.configured()
        args = {"session_id": "s", "program_id": "p", "signature": QA_DICT,
                "program_type": "ChainOfThought"}
        self.assertFalse(self.ok(w, "create_program", args)["replaced"])
        self.ok(w, "execute_program", {"session_id": "s", "program_id": "p",
                                       "inputs": {"question": "q"}})
        again = self.ok(w, "create_program", args)
        self.assertTrue(again["replaced"])
        self.assertEqual(again["program_id"], "p")
        listing = self.ok(w, "list_programs", {"session_id": "s"})
        self.assertEqual(listing["total_count"], 1)
        self.assertEqual(listing["programs"][0]["execution_count"], 0)

    def test_program_id_is_generated_when_absent(self):
        w, _ = self.configured()
        a = self.ok(w, "create_program", {"signature": "question -> answer"})["program_id"]
        b = self.ok(w, "create_program", {"signature": "question -> answer"})["program_id"]
        self.assertTrue(a.startswith("prog_"), a)
        self.assertNotEqual(a, b)
        self.assertEqual(self.ok(w, "list_programs")["total_count"], 2)

    def test_cleanup_session(self):
        w, _ = self.configured()
        for sid, n in (("s1", 3), ("s2", 1)):
            for i in range(n):
                self.ok(w, "create_program", {"session_id": sid, "program_id": f"p{i}",
                                              "signature": "question -> answer"})
        self.assertEqual(self.ok(w, "cleanup_session", {"session_id": "s1"}),
                         {"status": "cleaned", "session_id": "s1", "programs_removed": 3})
        self.assertEqual(self.ok(w, "cleanup_session", {"session_id": "s1"})["programs_removed"], 0)
        self.assertEqual(self.ok(w, "list_programs", {"session_id": "s1"})["total_count"], 0)
        self.assertEqual(self.ok(w, "list_programs", {"session_id": "s2"})["total_count"], 1)
        self.fail(w, "cleanup_session", {}, "ValueError", "session_id")
        s = self.ok(w, "get_stats")
        self.assertEqual((s["programs_count"], s["sessions_count"]), (1, 1))

    def test_reset_state(self):
        w, _ = self.configured()
        self.ok(w, "create_program", {"program_id": "anon", "signature": "question -> answer"})
        for sid in ("s1", "s2"):
            self.ok(w, "create_program", {"session_id": sid, "program_id": "p",
                                          "signature": "question -> answer"})
        self.assertEqual(self.ok(w, "reset_state"), {"status": "reset", "programs_cleared": 3,
                                                     "sessions_cleared": 2, "lm_reset": False})
        for sid in (None, "s1", "s2"):
            self.assertEqual(self.ok(w, "list_programs", {"session_id": sid})["total_count"], 0)
        # The LM survives a plain reset...
        self.ok(w, "create_program", {"program_id": "p", "signature": "question -> answer"})
        self.ok(w, "execute_program", {"program_id": "p", "inputs": {"question": "q"}})
        # ...but not reset_lm.
        self.assertTrue(self.ok(w, "reset_state", {"reset_lm": True})["lm_reset"])
        self.ok(w, "create_program", {"program_id": "p", "signature": "question -> answer"})
        self.fail(w, "execute_program", {"program_id": "p", "inputs": {"question": "q"}},
                  ERR + "LMNotConfigured", "configure_lm")
        s = self.ok(w, "get_stats")
        self.assertEqual((s["lm_configured"], s["model"]), (False, None))

    def test_errors(self):
        w = self.spawn()
        self.ok(w, "create_program", {"program_id": "qa", "signature": "question -> answer"})
        self.fail(w, "execute_program", {"program_id": "qa", "inputs": {"question": "q"}},
                  ERR + "LMNotConfigured", "call configure_lm first")
        self.ok(w, "configure_lm", DUMMY)
        self.fail(w, "execute_program", {"program_id": "nope", "inputs": {}},
                  ERR + "ProgramNotFound", "'nope' not found")
        self.fail(w, "execute_program", {"inputs": {}}, "ValueError", "program_id")
        self.fail(w, "execute_program", {"program_id": "qa", "inputs": {}},
                  "ValueError", "missing question")
        self.fail(w, "execute_program", {"program_id": "qa", "inputs": {"question": "q", "lm": 1}},
                  "ValueError", "unknown lm")
        self.fail(w, "execute_program", {"program_id": "qa", "inputs": "q"}, "ValueError")
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
                  "ValueError", "unsupported program_type")
        self.fail(w, "create_program", {"signature": "q -> a", "program_type": "ReAct"},
                  "ValueError", 'ReAct needs "tools"')
        self.fail(w, "create_program", {"signature": "q -> a", "program_type": "BestOfN"},
                  "ValueError", '"reward"')
        self.fail(w, "create_program", {"signature": "q -> a", "session_id": 7},
                  "ValueError", "session_id")
        self.fail(w, "configure_lm", {}, "ValueError", '"model"')
        self.fail(w, "configure_lm", {"model": "dummy", "answers": ["Paris"]}, "ValueError", "answers")
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
        tmp = tempfile.mkdtemp(prefix="dspex_nodspy_")
        self.addCleanup(shutil.rmtree, tmp, True)
        with open(os.path.join(tmp, "nodspy_handlers.py"), "w") as f:
            f.write(textwrap.dedent("""
                def double(args):
                    return args["n"] * 2
            """))
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


class Store(unittest.TestCase):
    """programs.ProgramStore on its own (no worker, no DSPy)."""

    def setUp(self):
        sys.path.insert(0, PYTHON_DIR)
        self.addCleanup(sys.path.remove, PYTHON_DIR)
        from dspex_bridge import programs
        self.programs = programs
        self.store = programs.ProgramStore()

    def entry(self, sid, pid):
        return self.programs.ProgramEntry(sid, pid, "Predict", object(), {}, "q -> a", ("q",), {})

    def test_namespaces(self):
        s = self.store
        self.assertFalse(s.put(self.entry(None, "p")))
        self.assertFalse(s.put(self.entry("s1", "p")))
        self.assertFalse(s.put(self.entry("s1", "q")))
        self.assertTrue(s.put(self.entry("s1", "p")))
        self.assertEqual(s.counts(), (3, 1))
        self.assertEqual(s.ids("s1"), ["q", "p"])  # a replaced program is the newest
        self.assertIsNone(s.get("s2", "p"))
        self.assertEqual(s.delete("s1", "q").program_id, "q")
        self.assertIsNone(s.delete("s1", "q"))
        self.assertEqual(s.drop_session("s1"), 1)
        self.assertEqual(s.drop_session("s1"), 0)
        self.assertEqual(s.counts(), (1, 0))
        self.assertEqual(s.clear(), (1, 0))
        self.assertEqual(s.counts(), (0, 0))


if __name__ == "__main__":
    unittest.main()
