"""DSPy commands of the worker: configure an LM, create and run programs.

Imported in every worker at start (a ``*_commands`` module of the bridge: see
``commands.EXTENSION_MODULES``), so nothing here imports ``dspy`` at the top: the first command that needs it
imports it (about a second) and keeps the module.  Without DSPy (not
installed, broken, or ``DSPEX_DISABLE_DSPY=1``) ``configure_lm``,
``create_program`` and ``execute_program`` raise ``DSPyUnavailable``; the
bookkeeping commands (list, info, delete, cleanup, reset) and ``get_stats``
keep working on the (then empty) store, so the pool's session clean-up never
fails because of DSPy.

State:

* the LM is worker-wide (``dspy.configure(lm=...)``); the pool re-sends the
  last ``configure_lm`` to every new worker;
* programs live in ``programs.STORE`` under ``(session_id or None,
  program_id)``; ``create_program`` with an existing id replaces the program,
  so the pool can replay a session's ``create_program`` requests verbatim.

Key names follow DSPex V2's ``priv/python/dspy_bridge.py`` (``program_id``,
``signature``, ``inputs``, ``outputs``, ``execution_time``, ``programs``,
``total_count``, ``programs_removed``, ...); every command's docstring gives
its arguments and result.

Errors are the classes below (error ``type``
``"dspex_bridge.dspy_commands.<Class>"``) or ``ValueError`` for malformed
arguments.  API keys are never echoed: ``configure_lm`` reports secret-looking
options as ``"[REDACTED]"``, and an error whose text would contain a known
secret (an ``api_key``-like argument of ``configure_lm`` or an ``*_API_KEY``/
``*_TOKEN``/``*_SECRET`` environment variable) is replaced by a
``RedactedError`` carrying the redacted message and no traceback.

Modules: ``loader`` (importing DSPy), ``redaction`` (secrets), ``values``
(arguments and results), ``lm`` (``configure_lm`` and the LMs), ``create``
(signatures, ``create_program``), ``execute`` (``execute_program``),
``bookkeeping`` (the commands that need no DSPy, and the stats).
"""

class DSPyUnavailable(RuntimeError):
    """DSPy is not installed, does not import, or is disabled in this worker."""

    dspex_details = {"kind": "dspy_unavailable"}


class LMNotConfigured(RuntimeError):
    """``execute_program`` before any ``configure_lm``."""

    dspex_details = {"kind": "lm_not_configured"}


class ProgramNotFound(LookupError):
    """No program with this id in the request's session namespace."""

    dspex_details = {"kind": "program_not_found"}


class InvalidSignature(ValueError):
    """A signature DSPy cannot build, or that the bridge cannot run safely."""

    dspex_details = {"kind": "invalid_signature"}


class RedactedError(RuntimeError):
    """An error whose text contained a secret; the message is redacted."""


# The commands register themselves when imported; the errors above must exist first.
from . import bookkeeping, create, execute, lm, optimize, persist  # noqa: E402,F401
