"""The worker's store of DSPy programs, one namespace per session.

A program lives under ``(session_id, program_id)``; ``session_id`` is the
request's ``args["session_id"]`` or ``None`` for requests outside any session
(the anonymous namespace).  A session only ever sees its own namespace, so
the same ``program_id`` can exist in two sessions without either noticing.

Standard library only, no DSPy: the entries hold the DSPy module objects but
this file never touches them, so the bookkeeping commands (list, delete,
cleanup, reset, stats) work whether or not DSPy imports.  The worker serves
one request at a time, so there is no locking.
"""

import time


class ProgramEntry:
    """One stored program: the DSPy module plus what the commands report."""

    __slots__ = (
        "session_id",
        "program_id",
        "program_type",
        "module",
        "signature",
        "signature_string",
        "input_names",
        "output_types",
        "created_at",
        "execution_count",
        "last_executed",
        "definition",
        "replaced",
    )

    def __init__(self, session_id, program_id, program_type, module, signature,
                 signature_string, input_names, output_types, definition=None):
        self.session_id = session_id
        self.program_id = program_id
        self.program_type = program_type      # "Predict", "ChainOfThought", "ReAct", ...
        self.module = module                  # the dspy.Module instance
        self.signature = signature            # JSON-able {"inputs", "outputs", "instructions"}
        self.signature_string = signature_string
        self.input_names = input_names        # tuple of input field names
        self.output_types = output_types      # {name: annotation} of what the LM fills
        self.created_at = time.time()
        self.execution_count = 0
        self.last_executed = None
        self.definition = definition          # the create_program arguments, for save_program
        self.replaced = False                 # whether storing it replaced a program

    def created(self):
        """``create_program``'s result."""
        return {
            "program_id": self.program_id,
            "status": "created",
            "replaced": self.replaced,
            "session_id": self.session_id,
            "program_type": self.program_type,
            "signature": self.signature,
            "signature_string": self.signature_string,
        }

    def describe(self):
        """JSON-able summary (``list_programs`` items, ``get_program_info``)."""
        return {
            "program_id": self.program_id,
            "id": self.program_id,  # DSPex V2's list_programs key
            "session_id": self.session_id,
            "program_type": self.program_type,
            "signature": self.signature,
            "signature_string": self.signature_string,
            "created_at": self.created_at,
            "execution_count": self.execution_count,
            "last_executed": self.last_executed,
        }


class ProgramStore:
    def __init__(self):
        # session_id (str) or None -> {program_id -> ProgramEntry}; a namespace
        # is removed when its last program goes, so len() counts live sessions.
        self._spaces = {}

    def get(self, session_id, program_id):
        space = self._spaces.get(session_id)
        return None if space is None else space.get(program_id)

    def put(self, entry):
        """Store ``entry``, replacing a program of the same id; True if one was replaced."""
        space = self._spaces.setdefault(entry.session_id, {})
        replaced = space.pop(entry.program_id, None) is not None
        space[entry.program_id] = entry
        return replaced

    def delete(self, session_id, program_id):
        """Remove and return the entry, or None if there was none."""
        space = self._spaces.get(session_id)
        if space is None:
            return None
        entry = space.pop(program_id, None)
        if not space:
            del self._spaces[session_id]
        return entry

    def entries(self, session_id):
        """The namespace's entries, oldest first."""
        return list(self._spaces.get(session_id, {}).values())

    def ids(self, session_id):
        return list(self._spaces.get(session_id, {}))

    def drop_session(self, session_id):
        """Remove a whole namespace; the number of programs it held."""
        return len(self._spaces.pop(session_id, {}))

    def clear(self):
        """Remove everything; ``(programs, named sessions)`` removed."""
        counts = self.counts()
        self._spaces.clear()
        return counts

    def counts(self):
        """``(programs in all namespaces, named sessions holding at least one)``."""
        programs = sum(len(space) for space in self._spaces.values())
        sessions = sum(1 for sid in self._spaces if sid is not None)
        return programs, sessions


#: The worker's one store.
STORE = ProgramStore()
