"""Secrets never leave a worker: LM options shown redacted, and errors whose text would
contain a known secret replaced."""

import os
import re

from .. import errors
from . import RedactedError
from .values import jsonable

REDACTED = "[REDACTED]"
# Option names whose values are credentials: api_key, apiKey, x-api-key,
# token, access_token, aws_secret_access_key, password, Authorization, ...
_SECRET_NAME = re.compile(
    r"(?:^|[_\-.])(?:api_?key|key|secret|secret_access_key|password|passwd|token|"
    r"credentials?|authorization|auth)$|^apikey$|secret",
    re.IGNORECASE,
)
_SECRET_ENV = re.compile(r"(?:KEY|TOKEN|SECRET|PASSWORD|CREDENTIALS?)$|SECRET", re.IGNORECASE)
_seen_secrets = set()   # secret values received by configure_lm


def is_secret_name(name):
    return isinstance(name, str) and _SECRET_NAME.search(name) is not None


def remember_secrets(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if is_secret_name(key) and isinstance(item, str) and len(item) >= 4:
                _seen_secrets.add(item)
            else:
                remember_secrets(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            remember_secrets(item)


def known_secrets():
    found = set(_seen_secrets)
    for name, value in os.environ.items():
        if _SECRET_ENV.search(name) and len(value) >= 8:
            found.add(value)
    return found


def redact_text(text, secrets):
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def raise_redacted_if_secret(exc):
    secrets = known_secrets()
    if not secrets:
        return
    message = errors.message(exc)
    text = message + errors.format_traceback(exc)
    if not any(secret in text for secret in secrets):
        return
    redacted = RedactedError(
        f"{errors.type_name(exc)}: {redact_text(message, secrets)} "
        f"(traceback withheld: it contained a secret)"
    )
    # What the error was stays known (an LM's rate limit, say); only its text changed.
    redacted.dspex_details = getattr(exc, "dspex_details", None)
    raise redacted from None


def redacted_options(options):
    """JSON-able copy of LM options with credential values replaced."""
    if isinstance(options, dict):
        return {
            str(k): REDACTED if is_secret_name(k) else redacted_options(v)
            for k, v in options.items()
        }
    if isinstance(options, (list, tuple)):
        return [redacted_options(v) for v in options]
    return jsonable(options)
