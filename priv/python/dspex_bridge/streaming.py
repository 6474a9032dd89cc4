"""Streaming replies: a command that is a generator sends each value it yields as a chunk
before its result.

A plain ``def`` generator's ``return value`` is the result; an ``async def`` generator cannot
return a value in Python, so it ends with ``yield streaming.result(value)`` (or its result is
null). Frames: ``{"id": N, "chunk": value}`` from the worker; ``{"id": N, "credit": n}`` from
the pool, as the consumer takes chunks. A request carries ``"stream": window``, the chunks
it may send before its first credit; a generator waits at ``yield`` while it has none left,
and stops (``GeneratorExit`` at its ``yield``) when the pool cancels the request. Called
without ``"stream"`` (``execute/3``), a generator runs to its end and only its result is sent
(with ``concurrency`` above 1, a cancel still stops it at its next ``yield``).
"""

import asyncio
import inspect
import threading

from . import codec, elixir, errors, protocol

CANCEL = "__cancel__"


class Result:
    """The result of an ``async def`` generator: ``yield streaming.result(value)``."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def result(value):
    return Result(value)


class StreamCancelled(Exception):
    """The pool cancelled the streaming request (its consumer stopped)."""


def is_stream(value):
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


def _items(stream, loop_holder):
    """The stream's values as a plain iterator, ending with a ``Result``."""
    if inspect.isgenerator(stream):
        try:
            while True:
                yield next(stream)
        except StopIteration as stop:
            yield Result(stop.value)
        return
    loop = loop_holder.setdefault("loop", asyncio.new_event_loop())
    try:
        while True:
            value = loop.run_until_complete(stream.__anext__())
            if isinstance(value, Result):
                yield value
                return
            yield value
    except StopAsyncIteration:
        yield Result(None)


def _close(stream, loop_holder):
    if inspect.isgenerator(stream):
        stream.close()
    else:
        loop = loop_holder.get("loop")
        if loop is not None:
            loop.run_until_complete(stream.aclose())


class UnsendableChunk(ValueError):
    """A value the generator yielded that JSON cannot carry: the request fails as a result
    that cannot be sent would (``:unserializable_result``)."""

    dspex_details = {"kind": "unserializable_result"}


class ChunkTooLarge(ValueError):
    """A chunk over the pool's frame limit (``:reply_too_large``, as a result would be)."""

    dspex_details = {"kind": "reply_too_large"}


def _chunk_frame(rid, value, max_frame):
    try:
        payload = codec.dumps({"id": rid, "chunk": value})
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise UnsendableChunk(errors.unsendable("a chunk", value, exc)) from None
    if len(payload) > max_frame:
        advice = "yield smaller chunks, or raise it"
        raise ChunkTooLarge(errors.too_large("a chunk", len(payload), max_frame, advice))
    return len(payload).to_bytes(4, "big") + payload


def drive(stream, rid, window, write, wait_credit, max_frame, cancelled=None):
    """Runs ``stream`` to its end and returns its result, sending chunks if ``window`` is
    set; ``wait_credit()`` blocks until the pool grants more (returns how many) or raises
    ``StreamCancelled``.  ``cancelled()``, looked at after each value, stops the stream
    early the same way: a generator run through by ``execute/3`` is cancelled at its next
    ``yield`` rather than left running until its worker is replaced."""
    loop_holder = {}
    credits = window or 0
    try:
        for value in _items(stream, loop_holder):
            if isinstance(value, Result):
                return value.value
            if cancelled is not None and cancelled():
                raise StreamCancelled("the pool cancelled the request")
            if window is None:
                continue
            while credits <= 0:
                credits += wait_credit()
            write(_chunk_frame(rid, value, max_frame))
            credits -= 1
    except StreamCancelled:
        _close(stream, loop_holder)
        raise
    finally:
        loop = loop_holder.get("loop")
        if loop is not None:
            loop.close()


def serial_control(rid, inbox, window):
    """``(wait_credit, cancelled)`` for a worker serving one request at a time, from its
    request pipe (see ``protocol.FrameInbox``): ``wait_credit`` takes this request's credits
    and cancel; ``cancelled()`` (None unless the reply streams) looks, without waiting, for
    the cancel the pool sends when the consumer halts or the call's deadline passes, so the
    stream stops at its next ``yield`` rather than once its window is spent."""

    def control(payload):
        return not elixir.is_tool_result(payload)

    def is_cancel(payload):
        if protocol.second_key(payload) != protocol.REQUEST_KEY:
            return False
        message = codec.loads(payload)
        return message.get("id") == rid and message.get("command") == CANCEL

    stopped = False

    def cancelled():
        nonlocal stopped
        if not stopped:
            arrived = inbox.poll()
            stopped = arrived is None or any(is_cancel(payload) for payload in arrived)
        return stopped

    return _serial_credits(rid, inbox, control), cancelled if window else None


def _serial_credits(rid, inbox, control):
    def wait_credit():
        while True:
            payload = inbox.next(control)
            if payload is None:
                raise StreamCancelled("the pool closed the request pipe")
            message = codec.loads(payload)
            if message.get("id") != rid:
                continue
            if message.get("command") == CANCEL:
                raise StreamCancelled("the consumer stopped")
            credit = message.get("credit")
            if isinstance(credit, int) and credit > 0:
                return credit

    return wait_credit


class Credits:
    """Credits of the streaming requests of a worker serving many: granted by the reading
    thread, taken by the threads that run the generators."""

    def __init__(self):
        self.lock = threading.Condition()
        self.granted = {}

    def grant(self, payload):
        message = codec.loads(payload)
        rid, credit = message.get("id"), message.get("credit")
        if isinstance(credit, int) and credit > 0:
            with self.lock:
                if rid in self.granted:
                    self.granted[rid] += credit
                    self.lock.notify_all()

    def waiter(self, rid, cancel_event):
        with self.lock:
            self.granted[rid] = 0

        def wait_credit():
            with self.lock:
                while self.granted.get(rid, 0) <= 0:
                    if cancel_event.is_set():
                        raise StreamCancelled("the consumer stopped")
                    self.lock.wait(0.05)
                got, self.granted[rid] = self.granted[rid], 0
                return got

        return wait_credit

    def done(self, rid):
        with self.lock:
            self.granted.pop(rid, None)
