"""The program store's commands, which need no DSPy (so a session's clean-up never fails
because of it), and the keys DSPy adds to ``get_stats``."""

import sys

from .. import errors
from ..errors import InvalidArguments
from ..commands import command, stats_extension
from ..programs import STORE
from . import loader
from .lm import CONFIGURED
from .values import entry as find_entry, session_id

@command
def list_programs(args):
    """The programs of the request's session (or of the anonymous namespace).

    Result: ``{"programs": [info, ...], "total_count", "session_id"}``, oldest
    first, each item as ``get_program_info``'s result.
    """
    sid = session_id(args)
    programs = [entry.describe() for entry in STORE.entries(sid)]
    return {"programs": programs, "total_count": len(programs), "session_id": sid}


@command
def get_program_info(args):
    """``{"program_id"}`` -> ``{"program_id", "id", "session_id", "program_type",
    "signature", "signature_string", "created_at", "execution_count",
    "last_executed"}`` (times: Unix seconds; ``last_executed`` null until run)."""
    return find_entry(args).describe()


@command
def delete_program(args):
    """``{"program_id"}`` -> ``{"program_id", "status": "deleted", "session_id"}``."""
    entry = find_entry(args)
    STORE.delete(entry.session_id, entry.program_id)
    return {"program_id": entry.program_id, "status": "deleted", "session_id": entry.session_id}


@command
def cleanup_session(args):
    """``{"session_id"}`` -> ``{"status": "cleaned", "session_id", "programs_removed"}``.

    Drops every program of the session (0 if it had none) and its own LM, if it
    configured one; the worker's LM is untouched.
    """
    if args.get("session_id") is None:
        raise InvalidArguments('cleanup_session needs "session_id"')
    sid = session_id(args)
    CONFIGURED.sessions.pop(sid, None)
    return {"status": "cleaned", "session_id": sid, "programs_removed": STORE.drop_session(sid)}


@command
def reset_state(args):
    """Drop the programs of every session and of the anonymous namespace.

    The LM stays configured unless ``"reset_lm": true`` (the pool sends
    ``configure_lm`` only to new workers, so a reset worker keeps serving).
    Result: ``{"status": "reset", "programs_cleared", "sessions_cleared",
    "lm_reset"}``.
    """
    reset_lm = args.get("reset_lm", False)
    if not isinstance(reset_lm, bool):
        raise InvalidArguments("reset_lm must be true or false")
    programs, sessions = STORE.clear()
    CONFIGURED.sessions.clear()
    if reset_lm:
        CONFIGURED.pool_lm = None
        CONFIGURED.info = None
    return {"status": "reset", "programs_cleared": programs, "sessions_cleared": sessions,
            "lm_reset": reset_lm}


@stats_extension
def _dspy_stats():
    """Keys added to ``get_stats``: ``programs_count``, ``sessions_count`` (named
    sessions holding programs), ``lm_configured``, ``model``, ``dspy_available``,
    ``dspy_loaded`` (imported yet), ``dspy_version``.  Never imports DSPy."""
    programs, sessions = STORE.counts()
    stats = {"programs_count": programs, "sessions_count": sessions, "lm_configured": False,
             "model": None, "dspy_available": False, "dspy_loaded": False, "dspy_version": None}
    try:
        if loader.dspy_disabled() or loader.import_failed():
            return stats
        stats["dspy_available"] = loader.has_dspy()
        dspy = sys.modules.get("dspy")  # imported by us or by a user handler
        if dspy is not None:
            stats["dspy_loaded"] = True
            stats["dspy_version"] = getattr(dspy, "__version__", None)
            lm = CONFIGURED.pool_lm
            if lm is not None:
                stats["lm_configured"] = True
                stats["model"] = (CONFIGURED.info or {}).get("model") or getattr(lm, "model", None)
        elif stats["dspy_available"]:
            stats["dspy_version"] = loader.installed_version()
    except Exception as exc:  # get_stats is a health check: never fail it
        stats["dspy_stats_error"] = f"{errors.type_name(exc)}: {errors.message(exc)}"
    return stats
