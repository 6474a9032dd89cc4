"""A small OpenAI-compatible chat-completions server for the tests, on 127.0.0.1 only.

It answers DSPy's chat adapter: every output field the system message asks for gets the
configured answer. It waits ``--latency-ms`` before answering (watching for the client to
hang up meanwhile), can answer with another status code, and counts connections:

    GET  /stats   {"requests", "active", "max_active", "aborted", "completed"}
    GET  /prompts the user messages of the last 50 requests, oldest first
    POST /reset   zeroes the counts
    POST /config  {"latency_ms", "status", "answer", "error_code", "retry_after", "raw",
                   "script", "hold"}
                  changes them: a non-200 status answers an OpenAI-style error (with
                  "error_code" as its code, and a Retry-After header if "retry_after" is set);
                  "raw" is sent as the reply's whole content instead of the fields;
                  "script" is a list of {field: value} objects, one used per request in turn
                  (for the fields it names; the others get "answer"); "hold": the next
                  streamed reply stops before its last 6 pieces until POST /release

It prints ``LISTENING <port>`` once ready and exits when its stdin closes, so it never
outlives the test run that started it. Standard library only.
"""

import argparse
import json
import os
import re
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]")


def _text(value):
    return value if isinstance(value, str) else json.dumps(value)


class State:
    def __init__(self, latency_ms, status, answer):
        self.lock = threading.Lock()
        self.latency_ms = latency_ms
        self.status = status
        self.answer = answer
        self.error_code = None
        self.retry_after = None
        self.raw = None
        self.script = []
        self.hold = False
        self.released = threading.Event()
        self.reset()

    def reset(self):
        self.requests = self.active = self.max_active = self.aborted = self.completed = 0
        self.prompts = []

    def stats(self):
        return {
            "requests": self.requests,
            "active": self.active,
            "max_active": self.max_active,
            "aborted": self.aborted,
            "completed": self.completed,
        }


def _output_fields(messages):
    """The fields DSPy's chat adapter asks for: named in the last user message's closing
    "Respond with the corresponding output fields, ..." sentence."""
    user = [m.get("content") for m in messages if m.get("role") == "user"]
    last = user[-1] if user and isinstance(user[-1], str) else ""
    _, _, tail = last.rpartition("Respond with the corresponding output fields")
    fields = [name for name in _FIELD.findall(tail) if name != "completed"]
    return list(dict.fromkeys(fields)) or ["answer"]


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def setup(self):
            super().setup()
            # Headers and body are written separately: without this, Nagle's algorithm and
            # the client's delayed ACK hold every reply back about 40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _json(self, code, obj, headers=()):
            body = json.dumps(obj).encode()
            self.send_response(code)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def do_GET(self):
            if self.path.rstrip("/") == "/stats":
                with state.lock:
                    return self._json(200, state.stats())
            if self.path.rstrip("/") == "/prompts":
                with state.lock:
                    return self._json(200, {"prompts": list(state.prompts)})
            self._json(404, {"error": "not found"})

        def do_POST(self):
            path = self.path.rstrip("/")
            if path == "/reset":
                with state.lock:
                    state.reset()
                return self._json(200, {"ok": True})
            if path == "/release":
                state.released.set()
                return self._json(200, {"ok": True})
            if path == "/config":
                config = self._body()
                with state.lock:
                    state.latency_ms = config.get("latency_ms", state.latency_ms)
                    state.status = config.get("status", state.status)
                    state.answer = config.get("answer", state.answer)
                    for key in ("error_code", "retry_after", "raw", "script", "hold"):
                        if key in config:
                            setattr(state, key, config[key])
                return self._json(200, {"ok": True})
            if not path.endswith("/chat/completions"):
                return self._json(404, {"error": {"message": "not found"}})
            self._complete(self._body())

        def _complete(self, request):
            user = " ".join(
                m["content"] for m in request.get("messages", [])
                if m.get("role") == "user" and isinstance(m.get("content"), str)
            )
            with state.lock:
                state.prompts = (state.prompts + [user])[-50:]
                state.requests += 1
                state.active += 1
                state.max_active = max(state.max_active, state.active)
                latency, status, answer = state.latency_ms, state.status, state.answer
                code, retry_after, raw = state.error_code, state.retry_after, state.raw
                scripted = state.script.pop(0) if state.script else {}
            try:
                if self._client_left_within(latency / 1000.0):
                    with state.lock:
                        state.aborted += 1
                    return
                if status != 200:
                    error = {"message": f"status {status}", "type": "test", "code": code}
                    headers = [] if retry_after is None else [("Retry-After", str(retry_after))]
                    return self._json(status, {"error": error}, headers)
                fields = _output_fields(request.get("messages", []))
                content = "".join(
                    f"[[ ## {f} ## ]]\n{_text(scripted.get(f, answer))}\n\n" for f in fields
                )
                content += "[[ ## completed ## ]]"
                if raw is not None:
                    content = raw
                if request.get("stream"):
                    self._sse(request, content)
                    with state.lock:
                        state.completed += 1
                    return
                self._json(200, {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.get("model", "test"),
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                })
                with state.lock:
                    state.completed += 1
            except (BrokenPipeError, ConnectionResetError):
                with state.lock:
                    state.aborted += 1
            finally:
                with state.lock:
                    state.active -= 1

        def _sse(self, request, content):
            """The reply as server-sent events, a few characters a chunk, as OpenAI streams."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            # No length is known ahead: the stream ends when the connection does.
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            base = {"id": "chatcmpl-test", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": request.get("model", "test")}
            pieces = [content[i:i + 4] for i in range(0, len(content), 4)]
            with state.lock:
                hold, state.hold = state.hold, False
            for n, piece in enumerate(pieces):
                if hold and n == len(pieces) - 6:
                    # The tail waits for POST /release: what came before must already
                    # have reached the client (bounded, so no test can hang on it).
                    state.released.wait(30)
                    state.released.clear()
                event = {**base, "choices": [{"index": 0, "delta": {"content": piece},
                                              "finish_reason": None}]}
                self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                self.wfile.flush()
            final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
            self.wfile.write(b"data: " + json.dumps(final).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _client_left_within(self, seconds):
            """Waits `seconds`; True as soon as the client closes its connection."""
            deadline = time.monotonic() + seconds
            sock = self.connection
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                readable, _, _ = select.select([sock], [], [], left)
                if readable:
                    try:
                        data = sock.recv(1, 2)  # MSG_PEEK
                    except OSError:
                        return True
                    if not data:
                        return True
                    time.sleep(min(left, 0.01))

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog, read when the socket starts listening: the default (5) drops the
    # connections of many concurrent clients, which retry a second later.
    request_queue_size = 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--answer", default="42")
    args = parser.parse_args()
    state = State(args.latency_ms, args.status, args.answer)
    server = Server(("127.0.0.1", args.port), make_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"LISTENING {server.server_address[1]}", flush=True)
    sys.stdin.read()  # until the test run that started us is gone
    os._exit(0)


if __name__ == "__main__":
    main()
