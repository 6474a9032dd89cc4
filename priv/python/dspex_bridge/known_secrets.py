"""Secrets the worker knows of, kept out of everything it sends or prints.

A secret is the value of a credential-like option given to ``configure_lm``
(``api_key``, ``token``, ``password``, ...) or of a credential-like
environment variable (``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ...; at least 8
characters).  Every error reply, whatever command raised it, and every line
written through ``sys.stdout``/``sys.stderr`` has them replaced by
``[REDACTED]``: an exception that quotes the key it was given, or a library
that logs its request headers, cannot carry one to the pool's Logger or to
a caller.  So is anything that looks like a credential: ``sk-...`` keys,
bearer tokens, ``api_key=...``/``password: ...``.  (Bytes written to fd 1 or
2 below Python, by C code, are not seen.)
"""

import os
import re
import threading

REDACTED = "[REDACTED]"
# Option names whose values are credentials: api_key, apiKey, x-api-key,
# token, access_token, aws_secret_access_key, password, Authorization, ...
_SECRET_NAME = re.compile(
    r"(?:^|[_\-.])(?:api_?key|key|secret|secret_access_key|password|passwd|token|"
    r"credentials?|authorization|auth)$|^apikey$|secret",
    re.IGNORECASE,
)
_SECRET_ENV = re.compile(r"(?:KEY|TOKEN|SECRET|PASSWORD|CREDENTIALS?)$|SECRET", re.IGNORECASE)

_given = set()  # values received as credential-like options
_lock = threading.Lock()
# What ``known`` found last: (size of the environment, its credential-like
# (name, value) pairs, how many values were given, the secrets longest first).
# Checked in a few lookups, since every line printed asks.
_cache = (-1, (), -1, ())


def is_secret_name(name):
    return isinstance(name, str) and _SECRET_NAME.search(name) is not None


def remember(value):
    """Notes the credential-like values in ``value`` (a dict, nested or in lists)."""
    found = set()
    _collect(value, found)
    if found - _given:
        with _lock:
            _given.update(found)


def _collect(value, found):
    if isinstance(value, dict):
        for key, item in value.items():
            if is_secret_name(key) and isinstance(item, str) and len(item) >= 4:
                found.add(item)
            else:
                _collect(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect(item, found)


def known():
    """Every secret currently known, longest first (so a longer one that contains a
    shorter one is replaced whole)."""
    global _cache
    env_size, env_secrets, given_size, secrets = _cache
    environ = os.environ
    if (
        len(environ) == env_size
        and len(_given) == given_size
        and all(environ.get(name) == value for name, value in env_secrets)
    ):
        return secrets
    with _lock:
        given = set(_given)
    env_secrets = tuple(
        (name, value)
        for name, value in environ.items()
        if _SECRET_ENV.search(name) and len(value) >= 8
    )
    found = given | {value for _, value in env_secrets}
    secrets = tuple(sorted(found, key=len, reverse=True))
    _cache = (len(environ), env_secrets, len(given), secrets)
    return secrets


# Credentials by their look, for those the worker was never told of (a key read from a file,
# quoted back by a provider): "sk-..." keys, bearer tokens, and credential-like names given a
# value ("api_key=...", "password: ...").
_LOOKS_SECRET = (
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/\-]{12,}=*"), r"\1" + REDACTED),
    (
        re.compile(
            r"(?i)\b(api[_\-]?key|access[_\-]?token|secret|password|passwd|token)"
            r"([\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]{4,}"
        ),
        r"\1\2" + REDACTED,
    ),
)


def redact(text, secrets=None):
    """``text`` with every known secret (or every one of ``secrets``), and anything that
    looks like a credential, replaced."""
    if not isinstance(text, str) or not text:
        return text
    for secret in known() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _LOOKS_SECRET:
        text = pattern.sub(replacement, text)
    return text


class RedactingStream:
    """A text stream whose writes have known secrets replaced; everything else is the
    wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        self._stream.write(redact(text))
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)
