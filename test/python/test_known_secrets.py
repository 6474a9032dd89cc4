"""Which values count as secrets, and that the cached list follows the environment."""

import io
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "priv", "python"))

from dspex_bridge import known_secrets  # noqa: E402


class KnownSecrets(unittest.TestCase):
    def setUp(self):
        self.saved = dict(os.environ)
        self.addCleanup(self._restore)

    def _restore(self):
        os.environ.clear()
        os.environ.update(self.saved)

    def test_credential_like_variables_count_and_changes_are_seen(self):
        os.environ["SOME_SERVICE_TOKEN"] = "token-value-1"
        os.environ["SOME_SERVICE_URL"] = "http://not-a-secret"
        os.environ["SHORT_KEY"] = "abc"  # under 8 characters: too short to be told apart
        text = "token-value-1 http://not-a-secret abc"
        self.assertEqual(known_secrets.redact(text), "[REDACTED] http://not-a-secret abc")

        os.environ["SOME_SERVICE_TOKEN"] = "token-value-2"
        self.assertEqual(known_secrets.redact("token-value-2"), "[REDACTED]")
        self.assertEqual(known_secrets.redact("token-value-1"), "token-value-1")

        os.environ["OTHER_SECRET"] = "another-one-3"
        self.assertEqual(known_secrets.redact("another-one-3"), "[REDACTED]")

    def test_remembered_options_count_nested_and_the_longest_is_replaced_whole(self):
        known_secrets.remember({"model": "m", "extra": [{"api_key": "abcd1234"}]})
        known_secrets.remember({"headers": {"Authorization": "Bearer abcd1234-long"}})
        self.assertEqual(
            known_secrets.redact("x Bearer abcd1234-long y abcd1234"), "x [REDACTED] y [REDACTED]"
        )
        self.assertEqual(known_secrets.redact("model m"), "model m")

    def test_what_looks_like_a_credential_is_replaced_too(self):
        cases = {
            "bad key sk-abcdef1234567890abcdef": "bad key [REDACTED]",
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x": "Authorization: Bearer [REDACTED]",
            "api_key=hunter2 sent": "api_key=[REDACTED] sent",
            "{'password': 'hunter22'}": "{'password': '[REDACTED]'}",
            "max_tokens=100, tokens: 12, sk-short": "max_tokens=100, tokens: 12, sk-short",
        }
        for text, expected in cases.items():
            self.assertEqual(known_secrets.redact(text), expected, text)
        self.assertEqual(known_secrets.redact(expected), expected, "idempotent")

    def test_a_redacting_stream_replaces_what_it_writes(self):
        os.environ["PRINTED_PASSWORD"] = "hunter2-hunter2"
        out = io.StringIO()
        stream = known_secrets.RedactingStream(out)
        self.assertEqual(stream.write("pw=hunter2-hunter2\n"), len("pw=hunter2-hunter2\n"))
        stream.writelines(["a\n", "hunter2-hunter2\n"])
        stream.flush()
        self.assertEqual(out.getvalue(), "pw=[REDACTED]\na\n[REDACTED]\n")


if __name__ == "__main__":
    unittest.main()
