"""How a Python exception becomes the ``error`` object of a reply.

``type`` is the class name for built-in exceptions (``"ValueError"``) and
``module.QualName`` for everything else (``"mymod.MyError"``), so Elixir can
match on it without ambiguity.  ``message`` is ``str(exc)``; ``traceback`` is
the formatted traceback without the worker's own frames and the import
machinery's, so it starts in the user's code.  None of this may raise: a broken ``__str__`` must not
take the worker down.
"""

import importlib
import os
import re
import traceback as _traceback


def type_name(obj):
    """``"ValueError"`` for built-in types, ``"module.QualName"`` otherwise."""
    cls = type(obj)
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", cls.__name__)
    if module in (None, "builtins", "__builtin__"):
        return qualname
    return f"{module}.{qualname}"


def message(exc):
    try:
        return str(exc)
    except BaseException:
        return f"<exception str() failed for {type(exc).__name__}>"


# A result and a streamed chunk fail to be sent for the same two reasons; one wording for both.
def unsendable(subject, value, exc):
    """Why ``value`` (``subject``: "the result of 'cmd'", "a chunk") cannot be JSON."""
    return (
        f"{subject} (a {type_name(value)}) cannot be sent as JSON: "
        f"{type_name(exc)}: {message(exc)}"
    )


def too_large(subject, size, max_frame, advice):
    """Why a ``size``-byte encoding of ``subject`` cannot be one frame."""
    return (
        f"{subject} encodes to {size} bytes of JSON, more than the {max_frame}-byte "
        f"frame limit (the pool's max_frame); {advice}"
    )

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Only the dispatch loop and the handler loader: frames of built-in command
# modules (commands.py, dspy_commands/) are real code worth showing.
_DISPATCH_FILES = {
    os.path.join(_PACKAGE_DIR, "worker.py"),
    os.path.join(_PACKAGE_DIR, "handlers.py"),
}
_IMPORTLIB_DIR = os.path.dirname(os.path.abspath(importlib.__file__))


def _internal(tb):
    # The worker's dispatch frames and the import machinery tell the user nothing.
    filename = tb.tb_frame.f_code.co_filename
    return (
        filename in _DISPATCH_FILES
        or filename.startswith("<frozen importlib")
        or os.path.dirname(filename) == _IMPORTLIB_DIR
    )


def format_traceback(exc):
    """Formatted traceback of ``exc``, starting at the first frame outside the worker.

    If every frame is the worker's (a command called with the wrong
    signature, a handler module that does not exist), only the exception
    line(s) remain, which is all there is to say.
    """
    try:
        tb = exc.__traceback__
        while tb is not None and _internal(tb):
            tb = tb.tb_next
        return "".join(_traceback.format_exception(type(exc), exc, tb))
    except BaseException:
        return f"{type_name(exc)}: {message(exc)}\n(traceback could not be formatted)\n"


def describe(exc):
    """``(type, message, traceback)`` for an error reply."""
    return type_name(exc), message(exc), format_traceback(exc)


_KIND = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class InvalidArguments(ValueError):
    """The command's arguments are wrong (missing, of the wrong type, naming nothing the
    worker has): the caller gets ``{:validation_error, :invalid_args, message, context}``
    rather than a ``:python_exception``. The built-in DSPy commands raise it; a handler may
    too."""

    dspex_details = {"kind": "invalid_args"}


def details(exc):
    """What a command said of its error beyond its type, for the pool to classify it: the
    ``dspex_details`` attribute an extension may set on an exception (``{"kind": "lm_...",
    "retryable": bool, "retry_after": seconds}``), checked; ``None`` if there is none."""
    try:
        given = getattr(exc, "dspex_details", None)
        if not isinstance(given, dict) or not _KIND.match(str(given.get("kind", ""))):
            return None
        out = {"kind": given["kind"]}
        if isinstance(given.get("retryable"), bool):
            out["retryable"] = given["retryable"]
        retry_after = given.get("retry_after")
        if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool) \
                and 0 <= retry_after < 1e9:
            out["retry_after"] = retry_after
        return out
    except BaseException:
        return None
