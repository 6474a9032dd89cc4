"""What the DSPy command tests share: a worker case with DummyLM answers and the checks they use.

Workers are spawned exactly as the Rust NIF spawns them (worker_harness.py). The DSPy tests
need dspy in the interpreter running them, as in:

    .venv/bin/python -m unittest discover -s test/python -v

Under a python without dspy they are skipped.
"""

import importlib.util

from worker_harness import WorkerCase

HAVE_DSPY = importlib.util.find_spec("dspy") is not None
ERR = "dspex_bridge.dspy_commands."
# What a command raises for arguments it refuses (the pool's :invalid_args).
BAD_ARGS = "dspex_bridge.errors.InvalidArguments"
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

    def configured(self, lm=DUMMY, **kw):
        w = self.spawn(**kw)
        result = self.ok(w, "configure_lm", lm)
        return w, result
