"""Command registry and the built-in commands.

A command is a plain function ``fn(args: dict) -> JSON-able value``.  It
receives the request's ``args`` object and returns the reply's ``result``;
raising any exception produces an error reply (see ``errors.py``).

Built-in commands register themselves with the ``command`` decorator::

    from dspex_bridge.commands import command

    @command
    def predict(args):               # command name "predict"
        ...

    @command("text.upper")           # explicit name
    def configure(args):
        ...

Every module (or package) of the bridge whose name ends in ``_commands`` is an
extension, imported at start-up (``EXTENSION_MODULES``): a new file of
built-ins only has to exist and use the decorator; nothing else needs editing.
Such a module is imported in *every* worker before the first request, so it
should import heavy dependencies inside its functions, not at the top.

User handler commands (``--handlers``) are added to the same table by
``handlers.py`` after the built-ins, and may not reuse a built-in's name.

An extension module can add keys to ``get_stats`` with ``@stats_extension``
and to ``ping`` with ``@ping_extension`` (a function ``fn() -> dict``, cheap
and never raising); it cannot replace the built-in keys.
"""

import importlib.util
import os
import pkgutil
import sys

from . import codec
from .state import STATE

#: Extra modules of built-in commands, imported at start-up when present: the bridge's own
#: ``*_commands`` modules.
EXTENSION_MODULES = tuple(
    f"{__package__}.{module.name}"
    for module in pkgutil.iter_modules([os.path.dirname(__file__)])
    if module.name.endswith("_commands")
)

_REGISTRY = {}
_ASYNC_VARIANTS = {}
_STATS_EXTENSIONS = []
_PING_EXTENSIONS = []


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


def _extension_decorator(extensions, what):
    def decorate(fn):
        if not callable(fn):
            raise TypeError(f"{what} extension must be callable, got {fn!r}")
        if fn not in extensions:
            extensions.append(fn)
        return fn

    decorate.__doc__ = f"Decorator: ``fn() -> dict`` adds keys to every ``{what}`` result."
    return decorate


stats_extension = _extension_decorator(_STATS_EXTENSIONS, "get_stats")
ping_extension = _extension_decorator(_PING_EXTENSIONS, "ping")


def _extended(result, extensions):
    for extend in extensions:
        for key, value in extend().items():
            result.setdefault(key, value)
    return result


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


_HANDLERS = {}


def set_handlers(table):
    """Record the user handler module's commands (name -> function), for ``handler``."""
    _HANDLERS.clear()
    _HANDLERS.update(table)


def has_handler(name):
    """Whether the user handler module has a function named ``name``."""
    return name in _HANDLERS


def handler(name):
    """The user handler function named ``name``, for extensions that call back into user code
    (an agent's tool, a reward, a metric); ``LookupError`` naming the known ones if none."""
    fn = _HANDLERS.get(name) if isinstance(name, str) else None
    if fn is None:
        known = ", ".join(sorted(_HANDLERS)) or "none: the pool has no :handlers module"
        raise LookupError(f"no handler function named {name!r} (known: {known})")
    return fn


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


@command
def ping(args):
    """Liveness and identity of this worker."""
    result = {
        "status": "ok",
        "worker_id": STATE.worker_id,
        "pid": os.getpid(),
        "uptime": STATE.uptime(),
        "python": _PYTHON_VERSION,
        "json": codec.BACKEND,
    }
    return _extended(result, _PING_EXTENSIONS)


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
    return _extended(stats, _STATS_EXTENSIONS)
