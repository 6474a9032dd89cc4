"""Sessions in the DSPy commands: isolation, idempotent replay, generated ids, cleanup,
reset, and the program store on its own.

Needs dspy (skipped without it; see dspy_harness.py).
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dspy_harness import BAD_ARGS, ERR, HAVE_DSPY, QA_DICT, Base  # noqa: E402
from worker_harness import PYTHON_DIR  # noqa: E402


@unittest.skipUnless(HAVE_DSPY, "dspy is not installed in this python (use .venv/bin/python)")
class DSPySessions(Base):
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
        self.fail(w, "cleanup_session", {}, BAD_ARGS, "session_id")
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
