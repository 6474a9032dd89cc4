"""Turning a user's handler module (``--handlers MODULE``) into commands.

Every public function *defined in* the module becomes a command of the same
name: ``inspect.isfunction(f) and f.__module__ == module.__name__`` and the
name does not start with ``_``.  Functions the module merely imports
(``from os.path import join``), classes and other callables are left out, so
what is callable from Elixir is exactly what the module's author wrote.

The module is imported before the first request, so a broken module fails
the worker's start (status 2, traceback on stderr) instead of every request.
"""

import importlib
import inspect


class HandlerClash(Exception):
    """A handler function has the name of a built-in command."""


def public_functions(module):
    """Name -> function for the public functions defined in ``module``."""
    mod_name = module.__name__
    return {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and inspect.isfunction(obj)
        and obj.__module__ == mod_name
    }


def load(module_name, builtins):
    """Import ``module_name`` and return its commands.

    Import errors propagate unchanged (the caller prints the traceback);
    ``HandlerClash`` is raised when a function would shadow a built-in.
    """
    module = importlib.import_module(module_name)
    functions = public_functions(module)
    clashes = sorted(set(functions) & set(builtins))
    if clashes:
        if len(clashes) == 1:
            what = f"{clashes[0]!r}, which is the name of a built-in command; rename it"
        else:
            names = ", ".join(repr(n) for n in clashes[:-1]) + f" and {clashes[-1]!r}"
            what = f"{names}, which are names of built-in commands; rename them"
        raise HandlerClash(
            f"handler module {module_name!r} defines {what} "
            f"(a leading '_' keeps a helper function private)"
        )
    return functions
