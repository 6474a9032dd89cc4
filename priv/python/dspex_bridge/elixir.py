"""Calling the Elixir application's tools from Python.

A pool started with ``tools: [lookup_order: {&MyApp.Orders.lookup/1, "Find an order"}]``
lets any command (and DSPy's ReAct) call them::

    from dspex_bridge import elixir

    def ship(args):
        order = elixir.call("lookup_order", {"id": args["id"]})   # blocks this request only
        return {"shipped": order["id"]}

    async def aship(args):                                          # in an async def command
        return await elixir.acall("lookup_order", {"id": args["id"]})

The function runs in a fresh Elixir process, within what is left of the request's deadline,
and gets the arguments as a map with string keys. Its result comes back as the call's
value; an Elixir exception, exit or timeout, a name that is not registered, or a call made
outside a request raises ``ElixirToolError``. Calls from many requests at once proceed
concurrently (with the pool's ``concurrency`` above 1).

Frames: the worker writes ``{"id": N, "tool_call": {"call": K, "name", "args"}}`` on its reply
pipe; the pool answers ``{"id": N, "tool_result": {"call": K, "ok", "value" | "error"}}`` on
the request pipe.
"""

import asyncio
import itertools
import json
import os
import threading

from . import codec
from .protocol import TOOL_RESULT_KEY, second_key
from .state import STATE

_calls = itertools.count(1)
_transport = None  # set by the serving loop (see serve_serially / serve_concurrently)


class ElixirToolError(Exception):
    """An Elixir tool call failed: the tool raised, exited, timed out, or is not registered."""


def registered():
    """The pool's tools as the workers are told of them: name -> {"description", "args"}."""
    global _registered
    if _registered is None:
        try:
            _registered = json.loads(os.environ.get("DSPEX_ELIXIR_TOOLS") or "{}")
        except ValueError:
            _registered = {}
    return _registered


_registered = None


def call(name, args=None):
    """Runs Elixir tool ``name`` with ``args`` (a dict) and returns its result."""
    request_id, frame, call_id = _prepare(name, args)
    return _outcome(name, _transport.wait(request_id, call_id, frame))


async def acall(name, args=None):
    """``call`` for an ``async def`` command: the event loop goes on while the tool runs."""
    request_id, frame, call_id = _prepare(name, args)
    return _outcome(name, await _transport.await_(request_id, call_id, frame))


def _prepare(name, args):
    if _transport is None:
        raise ElixirToolError("Elixir tools can only be called while the worker serves requests")
    request_id = _current_request()
    if request_id is None:
        raise ElixirToolError(f"Elixir tool {name!r} called outside a request")
    if not isinstance(name, str):
        raise ElixirToolError(f"a tool name is a string, got {name!r}")
    call_id = next(_calls)
    body = {"id": request_id, "tool_call": {"call": call_id, "name": name, "args": args or {}}}
    try:
        payload = codec.dumps(body)
    except (TypeError, ValueError) as exc:
        raise ElixirToolError(f"the arguments of {name!r} cannot be sent as JSON: {exc}") from None
    if len(payload) > STATE.max_frame:
        raise ElixirToolError(f"the arguments of {name!r} are over the pool's max_frame")
    return request_id, len(payload).to_bytes(4, "big") + payload, call_id


def _current_request():
    from .concurrent import current_request_id

    rid = current_request_id()
    return rid if rid is not None else STATE.current_request


def _outcome(name, result):
    if result.get("ok") is True:
        return result.get("value")
    raise ElixirToolError(str(result.get("error", f"Elixir tool {name!r} failed")))


def is_tool_result(payload):
    """Whether a frame from the pool is a tool's result rather than a request."""
    return second_key(payload) == TOOL_RESULT_KEY


class _Serial:
    """One request at a time: the call writes its frame, then takes its answer from the
    request pipe (see ``protocol.FrameInbox``)."""

    def __init__(self, inbox, write_frame):
        self.inbox = inbox
        self.write_frame = write_frame

    def wait(self, request_id, call_id, frame):
        self.write_frame(frame)
        while True:
            payload = self.inbox.next(is_tool_result)
            if payload is None:
                raise ElixirToolError("the pool closed the worker's request pipe")
            message = codec.loads(payload)
            result = message.get("tool_result") or {}
            if message.get("id") == request_id and result.get("call") == call_id:
                return result

    async def await_(self, request_id, call_id, frame):
        return self.wait(request_id, call_id, frame)


class _Concurrent:
    """Many requests at once: the reading thread hands each answer to the call waiting for
    it (``resolve``); a thread waits on an event, a task on a future."""

    def __init__(self, send):
        self.send = send
        self.lock = threading.Lock()
        self.pending = {}  # (request id, call id) -> [event or future, loop, result]

    def wait(self, request_id, call_id, frame):
        from .concurrent import cancelled

        event = threading.Event()
        entry = [event, None, None]
        key = (request_id, call_id)
        with self.lock:
            self.pending[key] = entry
        try:
            self.send(frame)
            while not event.wait(0.05):
                if cancelled():
                    raise ElixirToolError("the request was cancelled while its tool ran")
            return entry[2]
        finally:
            with self.lock:
                self.pending.pop(key, None)

    async def await_(self, request_id, call_id, frame):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        key = (request_id, call_id)
        with self.lock:
            self.pending[key] = [future, loop, None]
        try:
            self.send(frame)
            return await future
        finally:
            with self.lock:
                self.pending.pop(key, None)

    def resolve(self, payload):
        message = codec.loads(payload)
        result = message.get("tool_result") or {}
        with self.lock:
            entry = self.pending.get((message.get("id"), result.get("call")))
        if entry is None:
            return  # its request ended meanwhile
        waiter, loop, _ = entry
        if loop is None:
            entry[2] = result
            waiter.set()
        else:
            loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(result))


def serve_serially(inbox, write_frame):
    global _transport
    _transport = _Serial(inbox, write_frame)


def serve_concurrently(send):
    global _transport
    _transport = _Concurrent(send)
    return _transport
