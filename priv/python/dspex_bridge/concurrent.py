"""Serving many requests at once: the pool's ``concurrency`` above 1.

Requests are read on the main thread and start as they arrive: a plain
``def`` command runs on a pool of ``concurrency`` threads, an ``async def``
command as a task on the worker's event loop (a thread of its own).  Replies
leave in the order requests finish, each frame written whole under one lock;
the pool matches them to requests by id.

The pool cancels a request by sending a frame with the request's id and the
command ``__cancel__`` (no reply of its own).  A request still waiting for a
thread never runs; an ``async`` command's task is cancelled (what it awaits,
an HTTP request say, is abandoned and its connection closed); a thread
command sees ``cancelled()`` turn true and should return soon.  Either way
the request ends with one reply, an error of type ``Cancelled`` if it did
not finish, which the pool drops: the caller has already been told.
"""

import asyncio
import concurrent.futures
import contextvars
import inspect
import sys
import threading

from . import elixir, errors, process, streaming
from .protocol import REPLY_FD, REQUEST_FD, ProtocolError, decode_request_full, error_frame
from .protocol import CREDIT_KEY, TOOL_RESULT_KEY, buffered_frame_reader, frame_writer
from .protocol import second_key
from .state import STATE

CANCEL = streaming.CANCEL
# Built-in commands that never block: run on the reading thread, in order.
INLINE = frozenset({"ping", "echo", "get_stats"})

# (request id, threading.Event set when the pool cancels it) of the request the current
# thread or task runs.
_current = contextvars.ContextVar("dspex_current_request", default=None)


def cancelled():
    """Whether the pool has cancelled the request this code runs for.

    A long ``def`` command (a loop, a batch) should check it now and then and
    return early once it is true; its reply is then dropped.  Always false
    outside a request and with ``concurrency: 1``.
    """
    current = _current.get()
    return current is not None and current[1].is_set()


def current_request_id():
    """The id of the request this code runs for, or None."""
    current = _current.get()
    return None if current is None else current[0]


class _TaggedOutput:
    """stdout/stderr that prefix each line a request prints with ``[request N]``, so the
    pool's Logger can name the request it came from. A line is written whole once it ends,
    so lines of concurrent requests never mix (``print`` writes a line in pieces)."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()
        self._pending = threading.local()

    def write(self, text):
        pending = getattr(self._pending, "text", "") + text
        lines = pending.split("\n")
        self._pending.text = lines.pop()
        if lines:
            self._emit("".join(self._tag(line) + "\n" for line in lines))
        return len(text)

    def _tag(self, line):
        rid = current_request_id()
        return line if rid is None or not line.strip() else f"[request {rid}] {line}"

    def _emit(self, text):
        with self._lock:
            self._stream.write(text)

    def flush(self):
        rest = getattr(self._pending, "text", "")
        if rest:
            self._pending.text = ""
            self._emit(self._tag(rest))
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def serve(table, async_table, max_frame, prefix, concurrency):
    """Serve until EOF on the request pipe; never returns."""
    from .worker import exit_status, next_payload, protocol_error_frame, result_frame
    from .worker import unknown_command_frame

    write_frame = frame_writer(REPLY_FD)
    write_lock = threading.Lock()
    inflight = {}  # id -> (future, cancel event)
    inflight_lock = threading.Lock()
    state = STATE
    counts = state.commands
    describe = errors.describe

    sys.stdout = _TaggedOutput(sys.stdout)
    sys.stderr = _TaggedOutput(sys.stderr)

    loop = asyncio.new_event_loop()
    # What async code hands to threads (asyncio.to_thread, DSPy's LM clients) gets as many
    # as requests may run, not the default handful.
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="dspex-async-io")
    )
    threading.Thread(target=loop.run_forever, name="dspex-async", daemon=True).start()
    threads = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="dspex-request")
    tasks = {}  # id -> asyncio.Task, touched on the loop's thread only

    def send(frame):
        with write_lock:
            try:
                write_frame(frame)
            except OSError:  # nobody reads replies any more
                process.exit_now(0)

    def finish(rid, frame):
        with inflight_lock:
            inflight.pop(rid, None)
        send(frame)

    def failed(rid, exc):
        state.errors += 1
        if isinstance(exc, (asyncio.CancelledError, concurrent.futures.CancelledError)):
            return error_frame(rid, "Cancelled", "the pool cancelled the request", "", max_frame)
        etype, emsg, etb = describe(exc)
        return error_frame(rid, etype, emsg, etb, max_frame, errors.details(exc))

    def run_sync(rid, name, fn, args, event, window=None):
        _current.set((rid, event))
        try:
            result = fn(args)
            if streaming.is_stream(result):
                try:
                    wait_credit = credits.waiter(rid, event)
                    result = streaming.drive(
                        result, rid, window, send, wait_credit, max_frame, event.is_set
                    )
                finally:
                    credits.done(rid)
        except SystemExit as exc:
            process.exit_now(exit_status(exc.code))
        except BaseException as exc:
            return finish(rid, failed(rid, exc))
        finish(rid, result_frame(rid, name, result, max_frame))

    def start_async(rid, name, fn, args, event):
        # On the loop's thread. The reply is sent when the task is done, however it ends:
        # a task cancelled before its first step never runs a line of its own.
        async def body():
            _current.set((rid, event))
            return await fn(args)

        task = loop.create_task(body())
        tasks[rid] = task
        task.add_done_callback(lambda task: async_done(rid, name, task))

    def async_done(rid, name, task):
        tasks.pop(rid, None)
        if task.cancelled():
            return finish(rid, failed(rid, asyncio.CancelledError()))
        exc = task.exception()
        if isinstance(exc, SystemExit):
            process.exit_now(exit_status(exc.code))
        if exc is not None:
            return finish(rid, failed(rid, exc))
        finish(rid, result_frame(rid, name, task.result(), max_frame))

    def cancel_async(rid):
        task = tasks.get(rid)
        if task is not None:
            task.cancel()

    def cancel(rid):
        with inflight_lock:
            entry = inflight.get(rid)
        if entry is None:
            return  # already answered
        future, event = entry
        event.set()
        if future is None:
            loop.call_soon_threadsafe(cancel_async, rid)
        elif future.cancel():
            # A thread command still queued: it never runs, so it will not reply by itself.
            finish(rid, failed(rid, concurrent.futures.CancelledError()))

    read_frame = buffered_frame_reader(REQUEST_FD, max_frame)
    tools = elixir.serve_concurrently(send)
    credits = streaming.Credits()
    # Replies of inline commands, written together once no request is left to read at once:
    # requests that arrived together are answered in one write.
    answered = []
    while True:
        if answered and not read_frame.pending():
            send(b"".join(answered))
            answered.clear()
        payload = next_payload(read_frame, prefix)
        key = second_key(payload)
        if key == TOOL_RESULT_KEY:
            tools.resolve(payload)
            continue
        if key == CREDIT_KEY:
            credits.grant(payload)
            continue
        try:
            rid, name, args, window = decode_request_full(payload)
        except ProtocolError as exc:
            send(protocol_error_frame(exc, prefix, max_frame))
            continue
        if name == CANCEL:
            cancel(rid)
            continue
        state.requests += 1
        afn = async_table.get(name)
        fn = table.get(name)
        if afn is None and fn is None:
            send(unknown_command_frame(rid, name, table, max_frame))
            continue
        counts[name] = counts.get(name, 0) + 1
        if name in INLINE:
            # Answered at once, whatever else runs: the pool's health check must get through,
            # and a hand-off to a thread would cost these more than they do.
            try:
                frame = result_frame(rid, name, fn(args), max_frame)
            except Exception as exc:
                frame = failed(rid, exc)
            answered.append(frame)
            continue
        event = threading.Event()
        # Registered before it starts, so that a cancel can never miss it.
        with inflight_lock:
            # A streaming call runs as a thread command: its generator is driven there.
            if afn is not None and (window is None or fn is None):
                inflight[rid] = (None, event)
                loop.call_soon_threadsafe(start_async, rid, name, afn, args, event)
            else:
                future = threads.submit(run_sync, rid, name, fn, args, event, window)
                inflight[rid] = (future, event)
        payload = args = None


def split_async(table):
    """The ``async def`` commands of a table, to run on the event loop."""
    return {name: fn for name, fn in table.items() if inspect.iscoroutinefunction(fn)}
