"""Programs as JSON, to keep outside the worker: ``save_program`` and ``load_program`` (a
program's definition and its learned state, DSPy's ``dump_state``), and a session's programs
at once with ``export_session`` and ``import_session``. No pickle anywhere."""

from ..errors import InvalidArguments
from ..programs import STORE
from .create import build_entry
from .loader import dspy_command
from .values import entry, jsonable, session_id


@dspy_command
def save_program(dspy, args):
    """``{"program_id"}`` -> ``{"program_id", "definition", "state"}``: ``definition`` is
    what ``create_program`` was given, ``state`` the program's learned state (demos, ...)."""
    found = entry(args)
    return _saved(found)


@dspy_command
def load_program(dspy, args):
    """``{"definition", "state"?, "program_id"?}``: creates the program ``definition``
    describes (as ``create_program`` does; ``program_id`` wins over one in the definition)
    and loads ``state`` into it. Result: ``create_program``'s, with ``"loaded": true``."""
    return {**_load(dspy, args, session_id(args)).created(), "loaded": True}


@dspy_command
def export_session(dspy, args):
    """``{"session_id"?}`` -> ``{"session_id", "programs": [save_program's result, ...]}``."""
    sid = session_id(args)
    return {"session_id": sid, "programs": [_saved(e) for e in STORE.entries(sid)]}


@dspy_command
def import_session(dspy, args):
    """``{"programs": [save_program's results]}``: loads each into the request's session.
    Result: ``{"session_id", "program_ids"}``."""
    sid = session_id(args)
    programs = args.get("programs")
    if not isinstance(programs, list):
        raise InvalidArguments('import_session needs "programs": a list of save_program results')
    loaded = [_load(dspy, program, sid).program_id for program in programs]
    return {"session_id": sid, "program_ids": loaded}


def _saved(found):
    return {
        "program_id": found.program_id,
        "definition": found.definition,
        "state": jsonable(found.module.dump_state()),
    }


def _load(dspy, saved, sid):
    if not isinstance(saved, dict) or not isinstance(saved.get("definition"), dict):
        raise InvalidArguments('a saved program is {"definition": {...}, "state": {...}}, as '
                               'save_program returns it')
    definition = dict(saved["definition"])
    definition.pop("session_id", None)
    if sid is not None:
        definition["session_id"] = sid
    pid = saved.get("program_id") or definition.get("program_id")
    if pid is not None:
        definition["program_id"] = pid
    loaded = build_entry(dspy, definition)
    state = saved.get("state")
    if state is not None:
        if not isinstance(state, dict):
            raise InvalidArguments("a saved program's state must be an object")
        loaded.module.load_state(state)
    return loaded
