"""Wire protocol between the DSPex.NativePool Rust NIF and a Python worker.

Transport
    The worker reads requests from **fd 3** and writes replies to **fd 4**;
    nothing else ever touches these two descriptors.  stdout (fd 1) and
    stderr (fd 2) are separate pipes that Rust turns into Logger lines, so
    ``print()`` from user code, chatty libraries or C extensions can never
    corrupt a frame.  stdin (fd 0) is ``/dev/null``.

Framing (both directions)
    A 4-byte big-endian unsigned length ``N``, then exactly ``N`` bytes of
    UTF-8 JSON.  ``N`` may not exceed the worker's ``--max-frame`` (default
    67108864 = 64 MiB).

Request
    ``{"id": <int>, "command": <str>, "args": <object>}``

Reply, success
    ``{"id": <same int>, "success": true, "result": <any JSON>}``

Reply, failure
    ``{"id": <same int>, "success": false,
    "error": {"type": <str>, "message": <str>, "traceback": <str>}}``

    Error types produced by the worker itself, besides the exception class
    names of failing commands (``"ValueError"``, ``"mymod.MyError"``):
    ``UnknownCommand``, ``ProtocolError``, ``SerializationError``,
    ``FrameTooLarge``, and ``Cancelled`` (below).

Cancel (``--concurrency`` above 1 only)
    ``{"id": <id of a running request>, "command": "__cancel__", "args": {}}``
    asks the worker to stop that request; it gets no reply of its own, and the
    request still gets its one reply (``Cancelled`` if it did not finish).

Rules
    * Exactly one reply per request, carrying the request's id; in request
      order with ``--concurrency 1``, in the order requests finish above; ``"id"`` is always the first key of a reply, so a reader
      can route a reply without parsing all of it.
    * End of stream on fd 3 (at a frame boundary or inside a frame) means the
      pool is done with this worker: it exits at once with status 0.
    * A request length over ``--max-frame`` means the stream can no longer be
      trusted: the worker says so on stderr and exits with status 3.
    * A payload that is not valid JSON, or not an object with an int ``id``,
      a str ``command`` and an object ``args``, gets a ``ProtocolError``
      reply if its id can be recovered; otherwise the worker exits with
      status 3.
    * A reply that would exceed ``--max-frame`` is replaced by a
      ``FrameTooLarge`` error reply.

This module only knows bytes and frames; what commands mean lives in
``commands.py`` and the policy for errors and exits in ``worker.py``.
"""

import io
import os
import re
import select

from . import known_secrets
from .codec import loads, std_dumps

HEADER_SIZE = 4
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
REQUEST_FD = 3
REPLY_FD = 4


class RequestTooLarge(Exception):
    """A request header announced more bytes than ``--max-frame`` allows."""

    def __init__(self, size, max_frame):
        super().__init__(
            f"request frame of {size} bytes exceeds --max-frame {max_frame} bytes"
        )
        self.size = size
        self.max_frame = max_frame


class ProtocolError(Exception):
    """A complete frame whose payload is not a valid request.

    ``request_id`` is the id recovered from the payload, or ``None`` when no
    id could be found (then no reply can be addressed and the worker exits).
    """

    def __init__(self, message, request_id=None):
        super().__init__(message)
        self.request_id = request_id


def frame_reader(fd, max_frame):
    """Return ``read_frame()``: the next payload as a ``bytearray``, or ``None`` at EOF.

    Reads go straight to the descriptor (a raw, unbuffered ``FileIO`` and
    ``readinto``) into a buffer of exactly the announced size, so no byte of
    a following frame is ever consumed and no intermediate copy is made.
    Short reads (large frames, pipe buffer of 64 KiB) are looped over.
    ``RequestTooLarge`` is raised before any of the payload is read.
    """
    raw = io.FileIO(fd, "rb", closefd=False)
    readinto = raw.readinto
    header = bytearray(HEADER_SIZE)
    from_bytes = int.from_bytes

    def fill(buf, got):
        # Finish a short read; False on EOF.  readinto returns 0 at EOF (and
        # None only on a non-blocking fd, which the worker rules out at start).
        view = memoryview(buf)
        size = len(buf)
        while got < size:
            n = readinto(view[got:])
            if not n:
                return False
            got += n
        return True

    def read_frame():
        n = readinto(header)
        if n != HEADER_SIZE and not (n and fill(header, n)):
            return None
        size = from_bytes(header, "big")
        if size > max_frame:
            raise RequestTooLarge(size, max_frame)
        body = bytearray(size)
        if size:
            n = readinto(body)
            if n != size and not (n and fill(body, n)):
                return None
        return body

    read_frame.raw = raw  # keep the FileIO alive as long as the reader
    return read_frame


# How many times a concurrent worker with nothing left to read gives up the CPU, looking at
# its pipe each time, before it blocks in read(). Measured on 2 cores (100 B echo, 2 workers,
# 16 callers, concurrency 8, the order of the two variants swapped every round): blocking at
# once gave 47-59k req/s at 19-23 us of VM CPU per request; 10 looks gave 71-108k at 11-16 us.
# The requests written meanwhile are read as one batch, and a writer whose reader is not
# asleep in read() has no one to wake. 10 yields cost a few microseconds, once per batch, so
# an idle worker still sleeps. The serial reader does not do this: there the same looks
# lowered throughput (concurrency 1, order swapped every round, 6 rounds: 45-65k req/s without
# them, 41-57k with them, worse in 5 of 6 rounds), as its next request comes only after a reply.
LOOKS_BEFORE_SLEEPING = 10


def buffered_frame_reader(fd, max_frame, chunk=65536):
    """``read_frame()`` for a worker serving many requests: reads as much as the pipe holds
    (up to ``chunk`` bytes, or what a large frame needs) in one system call, so requests that
    arrive together cost one read. ``read_frame.pending()`` says whether a whole frame is
    already buffered, i.e. whether the next ``read_frame()`` will not block."""
    raw = io.FileIO(fd, "rb", closefd=False)
    readinto = raw.readinto
    from_bytes = int.from_bytes
    buf = bytearray()
    pos = 0
    # Read into one buffer kept for the worker's life: a fresh one per read costs more than
    # the read.
    landing = bytearray(chunk)
    landing_view = memoryview(landing)
    poll = select.poll()
    poll.register(fd, select.POLLIN)

    def look_before_sleeping():
        for _ in range(LOOKS_BEFORE_SLEEPING):
            if poll.poll(0):
                return
            os.sched_yield()

    def whole_frame_size():
        avail = len(buf) - pos
        if avail < HEADER_SIZE:
            return None, HEADER_SIZE - avail
        size = from_bytes(buf[pos:pos + HEADER_SIZE], "big")
        if size > max_frame:
            raise RequestTooLarge(size, max_frame)
        missing = HEADER_SIZE + size - avail
        return (size, 0) if missing <= 0 else (None, missing)

    def read_frame():
        nonlocal buf, pos
        while True:
            size, missing = whole_frame_size()
            if size is not None:
                start = pos + HEADER_SIZE
                body = buf[start:start + size]
                pos = start + size
                return body
            if pos:
                del buf[:pos]
                pos = 0
            if missing > chunk:
                # A frame larger than the landing buffer: read the rest of it straight in.
                start = len(buf)
                buf.extend(bytes(missing))
                n = readinto(memoryview(buf)[start:])
                if not n:
                    return None
                del buf[start + n:]
                continue
            if not buf:
                look_before_sleeping()
            n = readinto(landing_view)
            if not n:
                return None
            buf += landing_view[:n]

    def pending():
        try:
            return whole_frame_size()[0] is not None
        except RequestTooLarge:
            return True  # the next read_frame() raises at once

    read_frame.pending = pending
    read_frame.raw = raw
    return read_frame


class FrameInbox:
    """The request pipe of a worker serving one request at a time, while a request runs:
    a tool call waits for its result, a stream for its credits, and each keeps what the other
    is waiting for (a cancel, a credit) instead of dropping it."""

    def __init__(self, read_frame, fd=None):
        self.read_frame = read_frame
        self.fd = fd
        self.kept = []

    def poll(self):
        """Keeps the frames that arrived, without waiting for any, and returns them; None
        at EOF."""
        arrived = []
        while self.fd is not None and select.select([self.fd], [], [], 0)[0]:
            payload = self.read_frame()
            if payload is None:
                return None
            arrived.append(payload)
        self.kept.extend(arrived)
        return arrived

    def next(self, wanted):
        """The first frame for which ``wanted(payload)`` holds, or None at EOF."""
        for i, payload in enumerate(self.kept):
            if wanted(payload):
                del self.kept[i]
                return payload
        while True:
            payload = self.read_frame()
            if payload is None or wanted(payload):
                return payload
            self.kept.append(payload)

    def clear(self):
        """What the last request left is for nobody."""
        self.kept.clear()


def frame_writer(fd):
    """Return ``write_frame(frame)`` that writes a complete frame (header included).

    The frame is one buffer handed to ``os.write``; the loop only matters
    when the kernel accepts part of a large frame.  ``OSError`` (for example
    ``BrokenPipeError`` once the pool is gone) propagates to the caller.
    """
    write = os.write

    def write_frame(frame):
        n = write(fd, frame)
        size = len(frame)
        if n != size:
            view = memoryview(frame)
            while n < size:
                n += write(fd, view[n:])

    return write_frame


# -- requests ---------------------------------------------------------------

# Rust (serde) writes "id" first; this finds it even when the rest of the
# payload is broken, so the broken request still gets its one reply.
_LEADING_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*(-?[0-9]{1,20})\s*[,}]').match


def recover_id(payload):
    """Best-effort id of a payload that could not be decoded as a request."""
    m = _LEADING_ID(payload)
    return int(m.group(1)) if m else None


_KEY_AFTER_ID = re.compile(rb'\{"id":[0-9]{1,20},"([a-z_]{1,16})":').match
REQUEST_KEY = b"command"
CREDIT_KEY = b"credit"
TOOL_RESULT_KEY = b"tool_result"


def second_key(payload):
    """The key after the leading id of a frame from the pool, as the pool writes them:
    ``b"command"`` in a request, ``b"credit"`` or ``b"tool_result"`` in a control frame
    (``{"id":N,"credit":n}``), None in a frame of neither shape (it fails as a request).
    Only the frame's start is looked at, so nothing in a request's command or arguments
    can make it pass for a control frame."""
    m = _KEY_AFTER_ID(payload)
    return m and m.group(1)


def short_repr(value, limit=80):
    """``repr(value)``, cut to about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def decode_request(payload):
    """Return ``(id, command, args)`` or raise ``ProtocolError``."""
    return decode_request_full(payload)[:3]


def decode_request_full(payload):
    """Return ``(id, command, args, stream_window)`` or raise ``ProtocolError``; the window
    is None unless the reply may stream (see ``streaming``)."""
    try:
        req = loads(payload)
    except Exception as exc:  # JSONDecodeError, UnicodeDecodeError, RecursionError...
        raise ProtocolError(
            f"request payload is not valid UTF-8 JSON: {exc}", recover_id(payload)
        ) from None
    if type(req) is not dict:
        raise ProtocolError(
            f"request must be a JSON object, got {type(req).__name__}", None
        )
    rid = req.get("id")
    if type(rid) is not int:
        raise ProtocolError(f"request 'id' must be an integer, got {short_repr(rid)}", None)
    command = req.get("command")
    if type(command) is not str:
        raise ProtocolError(
            f"request 'command' must be a string, got {short_repr(command)}", rid
        )
    args = req.get("args")
    if type(args) is not dict:
        raise ProtocolError(
            f"request 'args' must be a JSON object, got {type(args).__name__}", rid
        )
    window = req.get("stream")
    return rid, command, args, window if type(window) is int and window > 0 else None


# -- replies ----------------------------------------------------------------

_SUCCESS_PREFIX = b'{"id":%d,"success":true,"result":'
_SUCCESS_FRAME_OVERHEAD = len(_SUCCESS_PREFIX) - 2 + 1  # minus "%d", plus "}"


def success_frame(rid, result_json, max_frame):
    """Complete frame for a success reply, or ``None`` if it exceeds ``max_frame``.

    ``result_json`` is the already-encoded result; it is spliced into the
    envelope instead of re-encoding a wrapper dict, which keeps ``"id"``
    first and saves a pass over large results.
    """
    prefix = _SUCCESS_PREFIX % rid
    size = len(prefix) + len(result_json) + 1
    if size > max_frame:
        return None
    return b"".join((size.to_bytes(HEADER_SIZE, "big"), prefix, result_json, b"}"))


def _clean(text, limit):
    # Error texts come from arbitrary exceptions: make them sendable UTF-8
    # (lone surrogates become U+FFFD) and optionally bound their length.
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"\n... [truncated, {len(text) - limit} more characters]"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def error_frame(rid, type_name, message, traceback_text, max_frame, details=None):
    """Complete frame for an error reply; texts are truncated if it would not fit.
    ``details`` (from ``errors.details``) are added to the error object.  Known secrets
    (see ``known_secrets``) are replaced in both texts, whatever command raised the error."""
    message = known_secrets.redact(message)
    traceback_text = known_secrets.redact(traceback_text)
    for limit in (None, 16384, 1024, 64):
        error = {
            "type": _clean(type_name, 256 if limit else None),
            "message": _clean(message, limit),
            "traceback": _clean(traceback_text, limit),
        }
        if details:
            error.update(details)
        payload = std_dumps({"id": rid, "success": False, "error": error})
        if len(payload) <= max_frame:
            break
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload
