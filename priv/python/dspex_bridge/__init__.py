"""DSPex.NativePool Python worker: the Python side of the pool's Rust NIF.

Modules, one idea each:

* ``protocol`` - the wire format (documented there) and frame I/O on fds 3/4
* ``codec``    - JSON encode/decode, stdlib or orjson with identical behaviour
* ``commands`` - the command registry and the built-in commands
* ``handlers`` - turning a user's ``--handlers`` module into commands
* ``errors``   - exceptions to ``{"type", "message", "traceback"}``
* ``process``  - fd, signal, stdio and parent-death hygiene
* ``state``    - worker identity and counters
* ``worker``   - start-up sequence and the request loop
* ``concurrent`` - the request loop of a worker that runs many requests at once
* ``streaming`` - generator commands: chunks, credits and cancellation
* ``elixir``   - calling the application's Elixir tools
* ``known_secrets`` - the secrets kept out of error replies and printed lines
* ``template`` - the warm interpreter that workers are forked from
* ``programs`` and ``dspy_commands`` - DSPy programs by session, and the DSPy commands

The entry point is ``priv/python/dspex_worker.py``.

For handlers: ``cancelled()`` says whether the pool has cancelled the request
the calling code runs for (poll it in long ``def`` commands), and
``current_request_id()`` names that request.
"""

from .concurrent import cancelled, current_request_id  # noqa: F401
