"""Start-up sequence and the request loop of a worker.

The loop is the hot path the pool is benchmarked on (a raw-pipe round trip
budget of about 30 µs), so it is written flat: every name it uses is bound to
a local before the loop, one read per header and one per body straight into
a buffer of the exact size, one ``os.write`` of header and body together,
and the success envelope spliced around the encoded result instead of
encoding a wrapper dict.

Exit policy (statuses the pool sees):

* 0 - EOF on fd 3, a broken reply pipe, or the parent is gone.  Always via
  ``os._exit`` so threads left by user code cannot keep the process alive.
* 2 - start-up failure: protocol fds missing, handler module fails to import
  or clashes with a built-in (message/traceback on stderr).
* 3 - the request stream cannot be trusted: oversize length, or a payload
  that is not a request and carries no recoverable id.
* N - a command raised ``SystemExit(N)``: the worker really exits.
"""

import asyncio
import gc
import traceback
from inspect import iscoroutine

from . import commands, elixir, errors, handlers, process, streaming
from .protocol import (
    CREDIT_KEY,
    DEFAULT_MAX_FRAME,
    FrameInbox,
    REPLY_FD,
    REQUEST_FD,
    ProtocolError,
    RequestTooLarge,
    TOOL_RESULT_KEY,
    decode_request_full,
    error_frame,
    frame_reader,
    frame_writer,
    second_key,
    short_repr,
    success_frame,
)
from .codec import dumps
from .state import STATE

# Frames from the pool for a request that is running, or has just ended.
_CONTROL_KEYS = (CREDIT_KEY, TOOL_RESULT_KEY)


def run(worker_id, pool, handlers=None, max_frame=DEFAULT_MAX_FRAME, concurrency=1):
    """Set the process up, load the commands, then serve until EOF. Never returns.

    With ``concurrency`` above 1 requests run side by side (see ``concurrent``)."""
    prefix = f"dspex_worker[{pool}/{worker_id}]"
    STATE.worker_id = str(worker_id)
    STATE.pool = str(pool)
    STATE.max_frame = max_frame
    STATE.concurrency = concurrency

    try:
        process.secure_protocol_fds()
    except process.MissingProtocolFds as exc:
        process.say(f"{prefix}: {exc}")
        process.exit_now(2)
    process.default_signals()
    process.line_buffered_stdio()
    process.redacting_stdio()
    process.watch_parent()

    table = _load_commands(prefix, handlers)

    # Everything imported so far lives as long as the process: keep it out of
    # the garbage collector's full passes.
    gc.collect()
    gc.freeze()

    try:
        if concurrency > 1:
            from . import concurrent

            async_table = {**concurrent.split_async(table), **commands.async_variants()}
            concurrent.serve(table, async_table, max_frame, prefix, concurrency)
        else:
            _serve(table, max_frame, prefix)
    except SystemExit as exc:
        process.exit_now(exit_status(exc.code))
    except KeyboardInterrupt:
        process.say(f"{prefix}: interrupted (SIGINT) outside a command; exiting")
        process.exit_now(130)
    except BaseException:
        process.say(f"{prefix}: internal error, exiting:\n{traceback.format_exc()}")
        process.exit_now(1)
    process.exit_now(0)


def exit_status(code):
    """The exit status for a ``SystemExit`` code."""
    # Same mapping as the interpreter applies to an uncaught SystemExit.
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    process.say(str(code))
    return 1


def _load_commands(prefix, handler_module):
    try:
        commands.load_extensions()
    except BaseException as exc:
        process.say(
            f"{prefix}: a built-in command module failed to import:\n"
            f"{errors.format_traceback(exc)}"
        )
        process.exit_now(2)
    table = commands.builtins()

    if handler_module:
        try:
            user = handlers.load(handler_module, table)
        except handlers.HandlerClash as exc:
            process.say(f"{prefix}: {exc}")
            process.exit_now(2)
        except BaseException as exc:
            process.say(
                f"{prefix}: failed to import handler module {handler_module!r}:\n"
                f"{errors.format_traceback(exc)}"
            )
            process.exit_now(2)
        if not user:
            process.say(
                f"{prefix}: warning: handler module {handler_module!r} defines no "
                f"public functions, so it adds no commands"
            )
        table.update(user)
        commands.set_handlers(user)
    return table


def _serve(table, max_frame, prefix):
    read_frame = frame_reader(REQUEST_FD, max_frame)
    write_frame = frame_writer(REPLY_FD)
    inbox = FrameInbox(read_frame, REQUEST_FD)
    elixir.serve_serially(inbox, write_frame)
    table_get = table.get
    state = STATE
    counts = state.commands
    counts_get = counts.get
    describe = errors.describe
    details = errors.details

    while True:
        payload = next_payload(read_frame, prefix)
        if second_key(payload) in _CONTROL_KEYS:
            continue  # for a request that has ended
        state.requests += 1
        try:
            rid, name, args, window = decode_request_full(payload)
        except ProtocolError as exc:
            frame = protocol_error_frame(exc, prefix, max_frame)
        else:
            fn = table_get(name)
            if name == streaming.CANCEL:
                continue  # a stream's cancel that came after its request ended
            if fn is not None:
                counts[name] = counts_get(name, 0) + 1
                state.current_request = rid
                inbox.clear()
                try:
                    result = fn(args)
                    if iscoroutine(result):  # an async def command, one at a time
                        result = run_coroutine(result)
                    elif streaming.is_stream(result):
                        credits, stopped = streaming.serial_control(rid, inbox, window)
                        result = streaming.drive(result, rid, window, write_frame, credits,
                                                 max_frame, stopped)
                except SystemExit:
                    raise
                except BaseException as exc:
                    state.errors += 1
                    etype, emsg, etb = describe(exc)
                    frame = error_frame(rid, etype, emsg, etb, max_frame, details(exc))
                else:
                    frame = result_frame(rid, name, result, max_frame)
            else:
                frame = unknown_command_frame(rid, name, table, max_frame)

        try:
            write_frame(frame)
        except OSError:  # BrokenPipeError: nobody is reading replies any more
            process.exit_now(0)
        # Do not keep the last request's data (up to several frames' worth)
        # alive while waiting, possibly for a long time, for the next one.
        payload = args = result = frame = None


_loop = None


def run_coroutine(coroutine):
    """Runs an ``async def`` command's coroutine to its end, on one loop kept for them."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coroutine)


def next_payload(read_frame, prefix):
    """The next request's bytes; exits the worker at EOF or when the stream breaks."""
    try:
        payload = read_frame()
    except RequestTooLarge as exc:
        process.say(
            f"{prefix}: {exc}; the request stream can no longer be trusted, "
            f"exiting with status 3"
        )
        process.exit_now(3)
    except OSError as exc:  # fd 3 unusable (closed in a forked child, ...)
        process.say(f"{prefix}: cannot read requests ({exc}); exiting")
        process.exit_now(0)
    if payload is None:  # EOF: the pool is done with us
        process.exit_now(0)
    return payload


def protocol_error_frame(exc, prefix, max_frame):
    """The reply to a request that could not be read; exits if it carries no id."""
    if exc.request_id is None:
        process.say(
            f"{prefix}: {exc}; no request id to reply to, so the stream "
            f"can no longer be trusted: exiting with status 3"
        )
        process.exit_now(3)
    STATE.errors += 1
    return error_frame(exc.request_id, "ProtocolError", str(exc), "", max_frame)


def result_frame(rid, name, result, max_frame):
    """The reply frame for a command's result: success, or why it cannot be sent."""
    state = STATE
    try:
        body = dumps(result)
    except SystemExit:
        raise
    except BaseException as exc:
        state.errors += 1
        return _serialization_error(rid, name, result, exc, max_frame)
    frame = success_frame(rid, body, max_frame)
    if frame is None:
        state.errors += 1
        message = errors.too_large(
            f"the result of {name!r}", len(body), max_frame, "return less data, or raise it"
        )
        frame = error_frame(rid, "FrameTooLarge", message, "", max_frame)
    return frame


def unknown_command_frame(rid, name, table, max_frame):
    STATE.errors += 1
    return error_frame(
        rid,
        "UnknownCommand",
        f"unknown command {short_repr(name, 100)}; available commands: "
        + ", ".join(sorted(table)),
        "",
        max_frame,
    )


def _serialization_error(rid, name, result, exc, max_frame):
    # No traceback: it would only show the JSON encoder's internals; the
    # message names the command, the result's type and the encoder's complaint.
    message = errors.unsendable(f"the result of {name!r}", result, exc)
    return error_frame(rid, "SerializationError", message, "", max_frame)
