"""Reading a request's arguments and making results JSON-able."""

import math
import uuid

from ..errors import InvalidArguments
from ..programs import STORE
from . import ProgramNotFound

def session_id(args):
    sid = args.get("session_id")
    if sid is None:
        return None
    if not isinstance(sid, str) or not sid:
        raise InvalidArguments(
            f"session_id must be a non-empty string (or absent for the anonymous "
            f"namespace), got {sid!r}"
        )
    return sid


def program_id(args, generate=False):
    # "program_id" is this bridge's (and the pool's) key; "id" is what DSPex V2's
    # create_program took, honoured when "program_id" is absent.
    pid = args.get("program_id")
    if pid is None:
        pid = args.get("id")
    if pid is None:
        if generate:
            return "prog_" + uuid.uuid4().hex[:16]
        raise InvalidArguments('this command needs "program_id"')
    if not isinstance(pid, str) or not pid:
        raise InvalidArguments(f"program_id must be a non-empty string, got {pid!r}")
    return pid


def where(session_id):
    if session_id is None:
        return "the anonymous namespace (requests without session_id)"
    return f"session {session_id!r}"


def entry(args):
    sid = session_id(args)
    pid = program_id(args)
    found = STORE.get(sid, pid)
    if found is None:
        ids = STORE.ids(sid)
        if ids:
            shown = ", ".join(repr(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
            known = f"it has {len(ids)}: {shown}"
        else:
            known = "it has no programs"
        raise ProgramNotFound(
            f"program {pid!r} not found in {where(sid)} of this worker ({known}); "
            f"create it with create_program first"
        )
    return found


def jsonable(value):
    """Prediction values as JSON: pydantic models dumped, unknown objects as str()."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(mode="json"))
        except Exception:
            pass
    return str(value)
