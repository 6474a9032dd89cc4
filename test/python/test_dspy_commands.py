"""The DSPy commands on programs (dspex_bridge/dspy_commands/), offline with a DummyLM:
configuring an LM, creating, running, listing and deleting programs.

Needs dspy (skipped without it; see dspy_harness.py).
"""

import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dspy_harness import DUMMY, ERR, HAVE_DSPY, QA_DICT, Base  # noqa: E402


@unittest.skipUnless(HAVE_DSPY, "dspy is not installed in this python (use .venv/bin/python)")
class DSPyPrograms(Base):
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

    def test_call_history_is_off_unless_asked_for(self):
        # DSPy's history kept up to 10,000 calls globally, per LM and per program.
        tmp = self.handler_dir("history_handlers", """
            def history(args):
                from dspy.clients import base_lm
                from dspex_bridge.dspy_commands.lm import CONFIGURED
                return [len(base_lm.GLOBAL_HISTORY), len(CONFIGURED.pool_lm.history)]
        """)
        for asked, expected in ((None, [0, 0]), (False, [3, 3])):
            lm = dict(DUMMY) if asked is None else {**DUMMY, "disable_history": asked}
            w, _ = self.configured(lm, handlers="history_handlers", pythonpath=[tmp])
            self.ok(w, "create_program", {"program_id": "qa", "signature": "question -> answer"})
            for _ in range(3):
                self.ok(w, "execute_program", {"program_id": "qa", "inputs": {"question": "?"}})
            self.assertEqual(self.ok(w, "history"), expected)

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


if __name__ == "__main__":
    unittest.main()
