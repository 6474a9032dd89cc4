"""DSPy, imported on first use, and the decorator of the commands that need it."""

import functools
import importlib.metadata
import importlib.util
import inspect
import os
import sys

from .. import errors
from ..commands import command, ping_extension
from . import DSPyUnavailable
from .lm_errors import classify
from .redaction import raise_redacted_if_secret

PINNED_DSPY = "3.4.1"
_SETUP_HINT = f"run bin/setup or pip install dspy=={PINNED_DSPY}"

_dspy = None            # the module, once imported
_dspy_error = None      # why it cannot be imported (cached: a worker does not heal)
_dspy_version = None    # from package metadata, for get_stats before the import


def load_dspy():
    """The ``dspy`` module, imported once; ``DSPyUnavailable`` if there is none."""
    global _dspy, _dspy_error
    if _dspy is not None:
        return _dspy
    if dspy_disabled():
        raise DSPyUnavailable(
            "DSPy is disabled in this worker (DSPEX_DISABLE_DSPY is set); "
            "unset DSPEX_DISABLE_DSPY to use the DSPy commands"
        )
    if _dspy_error is None:
        # LiteLLM otherwise downloads its model cost map from GitHub when first
        # used, in every worker, retrying with sleeps when offline; the copy it
        # ships is enough here.  An explicit setting in the environment wins.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            import dspy
        except ModuleNotFoundError as exc:
            if exc.name == "dspy":
                _dspy_error = f"DSPy is not installed in {sys.executable}; {_SETUP_HINT}"
            else:
                _dspy_error = _import_failure(exc)
        except Exception as exc:  # a broken install: missing dependency, bad version...
            _dspy_error = _import_failure(exc)
        else:
            _dspy = dspy
            return dspy
    raise DSPyUnavailable(_dspy_error)


def _import_failure(exc):
    return (
        f"DSPy is installed in {sys.executable} but cannot be imported "
        f"({errors.type_name(exc)}: {errors.message(exc)}); {_SETUP_HINT}"
    )


def dspy_command(fn):
    """Register ``fn`` as a command that needs DSPy and may see secrets in its errors."""

    @functools.wraps(fn)
    def run(args):
        try:
            result = fn(load_dspy(), args)
        except Exception as exc:
            _typed(exc)
            raise
        # A streaming command fails while it is driven, after this returned.
        return _typed_stream(result) if inspect.isgenerator(result) else result

    return command(fn.__name__)(run)


def _typed(exc):
    classify(exc)
    raise_redacted_if_secret(exc)


def _typed_stream(stream):
    try:
        return (yield from stream)
    except Exception as exc:
        _typed(exc)
        raise


def import_failed():
    """Whether an import of DSPy was tried and failed (a worker does not heal)."""
    return _dspy is None and _dspy_error is not None


def dspy_disabled():
    """True when ``DSPEX_DISABLE_DSPY`` is set (to anything but ``""``/``0``/``false``/``no``):
    the worker then behaves as if DSPy were not installed (tests, DSPy-free pools)."""
    return os.environ.get("DSPEX_DISABLE_DSPY", "").strip().lower() not in ("", "0", "false", "no")


_available = None


def has_dspy():
    """Whether DSPy is installed (and not disabled), found without importing it (importing
    dspy takes seconds and pulls in half of PyPI); cached, because ping is a health check."""
    global _available
    if _available is None:
        if dspy_disabled():
            _available = False
            return False
        try:
            _available = importlib.util.find_spec("dspy") is not None
        except (ImportError, ValueError):
            _available = False
    return _available


def installed_version():
    """DSPy's version from its package metadata (no import), or None."""
    global _dspy_version
    if _dspy_version is None:
        try:
            _dspy_version = importlib.metadata.version("dspy")
        except Exception:
            _dspy_version = ""
    return _dspy_version or None


@ping_extension
def _ping():
    return {"dspy_available": has_dspy()}
