"""Secrets never leave a worker: LM options shown redacted, and errors whose text would
contain a known secret replaced."""

from .. import errors
# The secrets themselves are kept by ..known_secrets, which redacts every error reply and printed
# line; here DSPy's own errors also lose their traceback if it held one.
from ..known_secrets import REDACTED, is_secret_name
from ..known_secrets import known as known_secrets
from ..known_secrets import redact as redact_text
from ..known_secrets import remember as remember_secrets  # noqa: F401 (used by lm)
from . import RedactedError
from .values import jsonable


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
