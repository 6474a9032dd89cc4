"""Identity and counters of this worker process.

One module-level object, ``STATE``, shared by the main loop (which updates
the counters) and the built-in commands (which report them).  It is a plain
``__slots__`` object rather than module globals so the hot loop can hold it
in a local and bump attributes without a global lookup per request.
"""

import time


class WorkerState:
    __slots__ = (
        "worker_id",
        "pool",
        "max_frame",
        "started",
        "requests",
        "errors",
        "commands",
        "concurrency",
        "current_request",
    )

    def __init__(self):
        self.worker_id = ""
        self.pool = ""
        self.max_frame = 0
        self.started = time.monotonic()
        # Every request that got (or is getting) a reply, this one included.
        self.requests = 0
        # Requests answered with success=false (any error type).
        self.errors = 0
        # Calls per known command name (unknown names are not recorded, so a
        # misbehaving client cannot grow this without bound).
        self.commands = {}
        # Requests run at once (the pool's concurrency option).
        self.concurrency = 1
        # The id of the request running now, with concurrency 1 (else see concurrent.py).
        self.current_request = None

    def uptime(self):
        return time.monotonic() - self.started


STATE = WorkerState()
