"""The template: one warm interpreter per pool that workers are forked from.

Importing DSPy costs each worker about a second of CPU and 60 MB of its own.
The template pays it once: it imports the bridge and the preloaded modules,
then forks a worker whenever the pool asks, so a new worker is ready in
milliseconds and shares the template's pages until it writes them.

It talks to the pool over a Unix seqpacket socket on fd 3, one JSON message
per packet, descriptors passed alongside (``SCM_RIGHTS``):

* pool -> template ``{"fork": "<worker id>", "cpu": <int or null>}`` with the
  worker's four pipe ends (requests to read, replies, stdout and stderr to
  write); template -> pool ``{"forked": "<id>", "pid": <int>}`` with a pidfd of
  the new process (opened by its parent before anything can reap it, so it
  names that process and no other), or ``{"fork_failed": "<id>", "error": ...}``.
* template -> pool ``{"exited": <pid>, "code": <int>, "signal": <int>}`` when a
  worker ends; the template keeps it a zombie (its PID and process group
  cannot be reused) until the pool sends ``{"release": <pid>}``.
* pool -> template ``{"close": true}`` (or end of file): the template reaps
  the workers that have exited and leaves.
* The first message is ``{"ready": ...}``: what was preloaded, and whether
  the template is fit to fork (one thread, no descriptors but its own; a
  fork of a process with other threads can inherit their locks held). When
  it is not, the pool spawns its workers the ordinary way and says why.

The template exits when the socket closes; its workers then die with it
(``PR_SET_PDEATHSIG``), as they die with the pool.
"""

import ctypes
import fcntl
import gc
import importlib
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import time

CONTROL_FD = 3
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PIPES = 4  # requests (read end), replies, stdout, stderr (write ends)


def run(pool, handlers, max_frame, concurrency, preload, preload_if_installed):
    """Preload, report, then fork workers until the pool goes. Never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _set_name("dspex-template")
    control = socket.socket(fileno=fcntl.fcntl(CONTROL_FD, fcntl.F_DUPFD_CLOEXEC, 10))
    # fds 3 and 4 stay taken (by /dev/null), so descriptors received later land above them.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (CONTROL_FD, 4):
        if fd != null:
            os.dup2(null, fd)
    if null not in (CONTROL_FD, 4):
        os.close(null)
    loaded, failed = _preload(list(preload), list(preload_if_installed))
    if failed:
        _send(control, {"ready": False, "error": failed})
        os._exit(2)
    unfit = _unfit_to_fork(control.fileno())
    _send(control, {"ready": True, "preloaded": loaded, "unfit": unfit})
    if unfit:
        os._exit(0)
    gc.collect()
    gc.freeze()  # the collector then leaves the shared pages alone
    settings = (pool, handlers, max_frame, concurrency)
    _serve(control, settings)


def _preload(required, optional):
    """Imports the bridge's commands and the preloaded modules; returns (loaded, error)."""
    from . import commands

    try:
        commands.load_extensions()
    except BaseException as exc:
        return [], f"a built-in command module failed to import: {exc!r}"
    wanted = required + [m for m in optional if importlib.util.find_spec(m) is not None]
    loaded = []
    for name in wanted:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            from .errors import format_traceback

            return loaded, f"preloading {name!r} failed:\n{format_traceback(exc)}"
        loaded.append(name)
    return loaded, None


def _unfit_to_fork(control_fd):
    """Why forking from this process is unsafe, or None."""
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        return f"the preloaded modules left {threads} threads running"
    own = {0, 1, 2, CONTROL_FD, 4, control_fd}
    others = sorted(int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) not in own)
    # listdir opened one descriptor of its own, gone now.
    others = [fd for fd in others if _is_open(fd)]
    if others:
        return f"the preloaded modules left descriptors {others} open"
    return None


def _is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _serve(control, settings):
    poller = select.poll()
    poller.register(control, select.POLLIN)
    children = {}  # pidfd -> pid, from fork to release
    exited = {}  # pid -> pidfd, of zombies waiting for release
    while True:
        for fd, _events in poller.poll():
            if fd == control.fileno():
                _on_message(control, poller, children, exited, settings)
            else:
                pid = children[fd]
                poller.unregister(fd)
                status = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOWAIT)
                exited[pid] = fd
                if pid in _released_early:
                    _released_early.discard(pid)
                    _release(children, exited, pid)
                else:
                    _send(control, _exit_message(pid, status))


def _on_message(control, poller, children, exited, settings):
    try:
        data, fds, _flags, _addr = socket.recv_fds(control, 4096, _PIPES)
    except (ConnectionError, OSError):
        data, fds = b"", []
    message = json.loads(data) if data else {"close": True}
    if "fork" in message:
        _fork(control, poller, children, message, fds, settings)
    elif "release" in message:
        _release(children, exited, message["release"])
    elif "close" in message:
        # The pool is done (or gone): leave no zombie to a parent that may never reap it.
        # Workers still running die with the template (PDEATHSIG).
        for pid in list(exited):
            _release(children, exited, pid)
        os._exit(0)
    for fd in fds:
        os.close(fd)


# Workers the pool released before their exit reached it (it stops waiting for a report after
# a while): reaped as soon as they exit, with no report nobody waits for.
_released_early = set()


def _release(children, exited, pid):
    fd = exited.pop(pid, None)
    if fd is None:
        if pid in children.values():
            _released_early.add(pid)
        return
    del children[fd]
    os.waitid(os.P_PIDFD, fd, os.WEXITED)
    os.close(fd)


def _fork(control, poller, children, message, fds, settings):
    worker_id = str(message["fork"])
    if len(fds) != _PIPES:
        _send(control, {"fork_failed": worker_id, "error": f"got {len(fds)} descriptors"})
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else the child would write the template's buffered lines again
    template_pid = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        _send(control, {"fork_failed": worker_id, "error": f"fork failed: {exc}"})
        return
    if pid == 0:
        _become_worker(worker_id, message.get("cpus"), fds, template_pid, settings)
    pidfd = os.pidfd_open(pid)
    children[pidfd] = pid
    poller.register(pidfd, select.POLLIN)
    socket.send_fds(control, [_encode({"forked": worker_id, "pid": pid})], [pidfd])


def _become_worker(worker_id, cpus, fds, template_pid, settings):
    try:
        high = [_above(fd, 10) for fd in fds]
        for fd, target in zip(high, (3, 4, 1, 2)):
            os.dup2(fd, target)
        # Nothing of the template's stays open: its socket, the zombies' pidfds, these copies.
        os.closerange(5, os.sysconf("SC_OPEN_MAX"))
        os.setpgid(0, 0)  # its own group, so a kill reaches what it starts
        if _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(1)
        # Its command line is the template's; its name (ps -o comm, /proc/PID/comm) says which.
        _set_name(f"dspex-worker-{worker_id}")
        if os.getppid() != template_pid:
            os._exit(1)  # the template died before PDEATHSIG was armed
        if cpus:
            os.sched_setaffinity(0, {int(cpu) for cpu in cpus})
        from . import state, worker

        state.STATE.started = time.monotonic()
        sys.argv = _worker_argv(sys.argv, worker_id)
        pool, handlers, max_frame, concurrency = settings
        worker.run(worker_id, pool, handlers, max_frame, concurrency)
    except BaseException:
        import traceback

        sys.stderr.write(f"worker {worker_id} failed as it was forked:\n{traceback.format_exc()}")
        sys.stderr.flush()
    os._exit(2)


_LIBC = ctypes.CDLL(None, use_errno=True)


def _set_name(name):
    _LIBC.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def _worker_argv(argv, worker_id):
    """The command line a spawned worker would have had, for code that reads ``sys.argv``."""
    out, skip = [argv[0], "--worker-id", worker_id], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg in ("--preload", "--preload-if-installed"):
            skip = True
        elif arg != "--template":
            out.append(arg)
    return out


def _above(fd, floor):
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)


def _exit_message(pid, status):
    if status is None:
        return {"exited": pid, "code": None, "signal": None}
    if status.si_code == os.CLD_EXITED:
        return {"exited": pid, "code": status.si_status, "signal": None}
    return {"exited": pid, "code": None, "signal": status.si_status}


def _encode(message):
    return json.dumps(message).encode()


def _send(control, message):
    control.sendall(_encode(message))
