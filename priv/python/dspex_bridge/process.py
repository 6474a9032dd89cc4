"""Process hygiene: what the worker sets up before any user code runs.

Everything here exists because the worker runs arbitrary user code that may
spawn subprocesses, fork, start threads or hang, while the pool must always
be able to (a) tell when the worker is gone and (b) be sure the worker goes
away when the pool does.
"""

import os
import signal
import sys
import threading
import time

from . import known_secrets
from .protocol import REPLY_FD, REQUEST_FD


class MissingProtocolFds(Exception):
    """fds 3/4 are not open: the worker was not started by the pool."""


def exit_now(status):
    """Leave at once with ``status``, whatever threads user code left running.

    ``sys.exit`` would run interpreter shutdown, which waits for every
    non-daemon thread and may hang in atexit hooks; the pool must see the
    exit promptly.  stdout/stderr are flushed first so last lines reach the
    Logger.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(status)


def say(text):
    """One line on stderr, for the pool's Logger (the protocol is on fds 3/4)."""
    try:
        sys.stderr.write(text.rstrip("\n") + "\n")
        sys.stderr.flush()
    except BaseException:
        pass


def _close_protocol_fds_in_child():
    # A forked child (multiprocessing 'fork', os.fork in a handler) must not
    # hold the protocol pipes: it could steal requests, interleave replies, or
    # keep the pool from seeing EOF when this worker dies.
    for fd in (REQUEST_FD, REPLY_FD):
        try:
            os.close(fd)
        except OSError:
            pass


def secure_protocol_fds():
    """Keep fds 3/4 out of every child and make sure they block."""
    for fd in (REQUEST_FD, REPLY_FD):
        try:
            os.set_inheritable(fd, False)  # never passed on through exec
            os.set_blocking(fd, True)  # exact-size reads/writes assume blocking
        except OSError as exc:
            raise MissingProtocolFds(
                f"fd {fd} is not open ({exc.strerror}); this worker speaks its protocol "
                f"on fds 3 and 4 and must be started by DSPex.NativePool"
            ) from None
    os.register_at_fork(after_in_child=_close_protocol_fds_in_child)


def default_signals():
    """``SIGCHLD`` back to default, so ``subprocess`` sees real exit codes.

    (An ignored SIGCHLD, inherited from the BEAM, makes the kernel reap
    children itself and ``waitpid`` fail with ECHILD.)
    """
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def line_buffered_stdio():
    """Each line written to stdout/stderr reaches the Logger as it is written."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and not getattr(stream, "line_buffering", True):
            try:
                reconfigure(line_buffering=True)
            except (ValueError, OSError):
                pass


def redacting_stdio():
    """Known secrets never reach the Logger through Python's own streams (see
    ``known_secrets``)."""
    sys.stdout = known_secrets.RedactingStream(sys.stdout)
    sys.stderr = known_secrets.RedactingStream(sys.stderr)


def watch_parent(interval=0.5):
    """Exit with status 0 when the parent changes (it died and we were re-parented).

    Belt and braces next to EOF on fd 3 and Rust's PR_SET_PDEATHSIG: EOF can
    be delayed while a handler is busy (or never come, if a grandchild holds
    the write end), and PDEATHSIG fires on the death of the spawning
    *thread*, not process.  A daemon thread, so it never keeps the worker up.
    """
    parent = os.getppid()

    def watch():
        getppid, sleep = os.getppid, time.sleep
        while True:
            sleep(interval)
            if getppid() != parent:
                # No goodbye on stderr and no flush: nobody reads those pipes
                # any more, and a write into a full pipe could block forever.
                os._exit(0)

    thread = threading.Thread(target=watch, name="dspex-parent-watch", daemon=True)
    thread.start()
    return thread
