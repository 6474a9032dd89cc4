"""The template's pure parts: the command line a forked worker gets, and exit reports."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "priv", "python"))

from dspex_bridge import template  # noqa: E402


class WorkerArgv(unittest.TestCase):
    def test_template_options_give_way_to_the_worker_id(self):
        argv = ["dspex_worker.py", "--pool", "P", "--template", "--preload", "dspy",
                "--preload-if-installed", "numpy", "--concurrency", "4"]
        self.assertEqual(
            template._worker_argv(argv, "3"),
            ["dspex_worker.py", "--worker-id", "3", "--pool", "P", "--concurrency", "4"],
        )


class Release(unittest.TestCase):
    def test_a_worker_released_before_its_exit_is_remembered_and_an_unknown_one_ignored(self):
        children, exited = {10: 123}, {}
        template._release(children, exited, 123)
        self.assertIn(123, template._released_early)
        template._release(children, exited, 999)
        self.assertNotIn(999, template._released_early)
        self.assertEqual(children, {10: 123}, "its pidfd stays watched until it exits")
        template._released_early.discard(123)


class ExitMessages(unittest.TestCase):
    def _status_of(self, code):
        pid = os.fork()
        if pid == 0:
            os._exit(code)
        status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        os.waitpid(pid, 0)
        return pid, status

    def test_an_exit_code_and_a_signal_are_told_apart(self):
        pid, status = self._status_of(7)
        self.assertEqual(template._exit_message(pid, status),
                         {"exited": pid, "code": 7, "signal": None})
        pid = os.fork()
        if pid == 0:
            os.kill(os.getpid(), 9)
        status = os.waitid(os.P_PID, pid, os.WEXITED)
        self.assertEqual(template._exit_message(pid, status),
                         {"exited": pid, "code": None, "signal": 9})


if __name__ == "__main__":
    unittest.main()
