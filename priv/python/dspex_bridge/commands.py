"""Command registry and the built-in commands.

A command is a plain function ``fn(args: dict) -> JSON-able value``.  It
receives the request's ``args`` object and returns the reply's ``result``;
raising any exception produces an error reply (see ``errors.py``).

Built-in commands register themselves with the ``command`` decorator::

    from dspex_bridge.commands import command

    @command
    def predict(args):               # command name "predict"
        ...

    @command("dspy.configure")       # explicit name
    def configure(args):
        ...

Modules listed in ``EXTENSION_MODULES`` are imported at start-up if they
exist, so a new file of built-ins (such as ``dspex_bridge/dspy_commands.py``)
only has to exist and use the decorator; nothing else needs editing.  Such a
module is imported in *every* worker before the first request, so it should
import heavy dependencies (``dspy``) inside its functions, not at the top.

User handler commands (``--handlers``) are added to the same table by
``handlers.py`` after the built-ins, and may not reuse a built-in's name.

An extension module can add keys to ``get_stats`` with ``@stats_extension``
(a function ``fn() -> dict``, cheap and never raising); it cannot replace
the built-in keys.
"""

import importlib.util
import os
import sys

from . import codec
from .state import STATE

#: Extra modules of built-in commands, imported at start-up when present.
EXTENSION_MODULES = ("dspex_bridge.dspy_commands",)

_REGISTRY = {}
_ASYNC_VARIANTS = {}
_STATS_EXTENSIONS = []


class CommandClash(Exception):
    """Two commands were given the same name."""


def register(name, fn):
    """Add ``fn`` as built-in command ``name``; a name can be taken only once."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"command name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"command {name!r} must be callable, got {fn!r}")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not fn:
        raise CommandClash(
            f"command {name!r} is already registered by "
            f"{getattr(existing, '__module__', '?')}.{getattr(existing, '__qualname__', '?')}"
        )
    _REGISTRY[name] = fn
    return fn


def command(name_or_fn=None):
    """Decorator registering a built-in command (``@command`` or ``@command("name")``)."""
    if callable(name_or_fn):
        return register(name_or_fn.__name__, name_or_fn)

    def decorate(fn):
        return register(name_or_fn or fn.__name__, fn)

    return decorate


def stats_extension(fn):
    """Decorator: ``fn() -> dict`` adds keys to every ``get_stats`` result."""
    if not callable(fn):
        raise TypeError(f"stats extension must be callable, got {fn!r}")
    if fn not in _STATS_EXTENSIONS:
        _STATS_EXTENSIONS.append(fn)
    return fn


def async_variant(name):
    """Decorator: an ``async def`` implementation of built-in command ``name``, used in
    place of the plain one when a worker runs requests concurrently (so that it can be
    cancelled while it waits, for an LM's reply say)."""

    def decorate(fn):
        _ASYNC_VARIANTS[name] = fn
        return fn

    return decorate


def async_variants():
    """The ``async def`` implementations of built-in commands (name -> function)."""
    return dict(_ASYNC_VARIANTS)


def builtins():
    """A copy of the built-in command table (name -> function)."""
    return dict(_REGISTRY)


def load_extensions():
    """Import the ``EXTENSION_MODULES`` that exist; their import errors propagate."""
    loaded = []
    for name in EXTENSION_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
            loaded.append(name)
    return loaded


# -- built-ins ------------------------------------------------------------------

_PYTHON_VERSION = "%d.%d.%d" % sys.version_info[:3]
_dspy_available = None


def dspy_disabled():
    """True when ``DSPEX_DISABLE_DSPY`` is set (to anything but ``""``/``0``/``false``/``no``):
    the worker then behaves as if DSPy were not installed (tests, DSPy-free pools)."""
    return os.environ.get("DSPEX_DISABLE_DSPY", "").strip().lower() not in ("", "0", "false", "no")


def _has_dspy():
    # find_spec locates the package without importing it (importing dspy takes
    # seconds and pulls in half of PyPI); cached, because ping is a health check.
    global _dspy_available
    if _dspy_available is None:
        if dspy_disabled():
            _dspy_available = False
            return False
        try:
            _dspy_available = importlib.util.find_spec("dspy") is not None
        except (ImportError, ValueError):
            _dspy_available = False
    return _dspy_available


@command
def ping(args):
    """Liveness and identity of this worker."""
    return {
        "status": "ok",
        "worker_id": STATE.worker_id,
        "pid": os.getpid(),
        "uptime": STATE.uptime(),
        "python": _PYTHON_VERSION,
        "json": codec.BACKEND,
        "dspy_available": _has_dspy(),
    }


@command
def echo(args):
    """Return ``args`` unchanged (protocol tests and benchmarks)."""
    return args


@command
def get_stats(args):
    """Counters since start; this request is already counted.

    Keys added by ``@stats_extension`` functions follow the built-in ones.
    """
    stats = {
        "worker_id": STATE.worker_id,
        "pid": os.getpid(),
        "uptime": STATE.uptime(),
        "requests": STATE.requests,
        "errors": STATE.errors,
        "commands": dict(STATE.commands),
    }
    for extend in _STATS_EXTENSIONS:
        for key, value in extend().items():
            stats.setdefault(key, value)
    return stats
