"""JSON encoding and decoding for frame payloads, with an optional accelerator.

Why a module of its own: the worker must behave the same whether or not
``orjson`` happens to be importable on the user's machine, so every place
where the two libraries disagree is handled here and nowhere else.

The reference behaviour is the standard library's::

    json.loads(payload)                        # payload: bytes / bytearray
    json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
               allow_nan=False).encode()

When ``orjson`` imports (and ``DSPEX_WORKER_JSON`` is not ``json``), it is
used as the fast path, and the few cases where it would answer differently
are detected cheaply and sent to the standard library, whose answer is then
authoritative:

* ``NaN`` / ``Infinity``: orjson silently writes ``null``; stdlib (with
  ``allow_nan=False``) raises.  So orjson's output is kept only when it is
  known to hold no such float: a small output without ``null`` at all; or a
  value whose first few hundred nodes, all of them plain JSON types, hold
  none (a walk that costs nothing for a megabyte string, where searching the
  output for ``null`` took 0.6 ms); or, failing both, a large output without
  ``null``.  Anything else is re-encoded by the stdlib, which raises for a
  non-finite float.
* Integers beyond 64 bits are refused when encoding, by both paths: the
  Elixir side refuses to send them and would otherwise receive a lossy float,
  so a reply carrying one is a clear error instead of silent rounding.
  orjson would decode them as lossy floats, but no request carries one: every
  request is written by the pool's encoder, which refuses them before sending
  (a scan of each payload for them cost more than orjson's whole decode, about
  1.3 ms per megabyte).
* Non-``str`` dict keys (int, float, bool, None): stdlib converts them to
  strings; orjson does so with ``OPT_NON_STR_KEYS``.
* dataclasses and datetimes: stdlib refuses them, so orjson is told to refuse
  too (``OPT_PASSTHROUGH_*`` with no ``default``).  The remaining known
  difference is that orjson also encodes ``uuid.UUID`` and ``enum.Enum``
  members, which the stdlib refuses.
* Anything orjson cannot decode (lone surrogate escapes, ``NaN`` literals) is
  retried with the stdlib, which accepts a few of these.

``dumps`` raises ``TypeError``/``ValueError`` (including
``UnicodeEncodeError`` for strings holding lone surrogates, which cannot be
UTF-8) or ``RecursionError`` for values that cannot be sent.
"""

import json as _json
import os as _os

_std_encoder = _json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_std_loads = _json.loads


_DIGITS_TO_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_NINETEEN_ZEROS = b"0" * 19
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def std_dumps(obj):
    """Encode ``obj`` with the standard library (the reference behaviour)."""
    out = _std_encoder(obj).encode("utf-8")
    # Only a run of 19+ digits can be an integer beyond 64 bits; look closer then.
    if _NINETEEN_ZEROS in out.translate(_DIGITS_TO_ZERO):
        _refuse_big_ints(obj)
    return out


def _refuse_big_ints(obj, depth=0):
    if isinstance(obj, bool) or depth > 1000:
        return
    if isinstance(obj, int):
        if not _INT_MIN <= obj <= _INT_MAX:
            raise ValueError(
                "integer %d is beyond 64 bits, which Elixir would receive as a "
                "rounded float; return it as a string" % obj
            )
    elif isinstance(obj, dict):
        for value in obj.values():
            _refuse_big_ints(value, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _refuse_big_ints(value, depth + 1)


# Searching an output this small for ``null`` costs under 3 us.
_SMALL_OUTPUT = 4096
# Nodes the walk below looks at before it gives up (about 20 us).
_WALK_BUDGET = 256
_INFINITIES = (float("inf"), float("-inf"))


def _all_floats_finite(obj):
    """Whether ``obj`` holds no NaN or infinity: True or False if a walk of at most
    ``_WALK_BUDGET`` containers and floats, all of plain JSON types (``dict`` with ``str``
    keys, ``list``, ``tuple``, ``str``, ``int``, ``bool``, ``float``, ``None``), can tell;
    None if it cannot (more nodes, or another type, such as a subclass orjson encodes)."""
    stack = [obj]
    budget = _WALK_BUDGET
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            continue
        budget -= 1
        if budget < 0:
            return None
        if kind is float:
            if value != value or value in _INFINITIES:
                return False
        elif kind is dict:
            if not all(type(key) is str for key in value):
                return None
            stack.extend(value.values())
        elif kind is list or kind is tuple:
            stack.extend(value)
        else:
            return None
    return True


def std_loads(payload):
    """Decode UTF-8 JSON ``payload`` (bytes/bytearray) with the standard library."""
    return _std_loads(payload)


def _load_orjson():
    if _os.environ.get("DSPEX_WORKER_JSON", "").strip().lower() == "json":
        return None
    try:
        import orjson
    except Exception:  # not installed, or a broken install: stdlib is always fine
        return None
    return orjson


_orjson = _load_orjson()

if _orjson is None:
    BACKEND = "json"
    dumps = std_dumps
    loads = std_loads
else:
    BACKEND = "orjson"

    def _make_orjson_codec(orjson):
        o_dumps = orjson.dumps
        o_loads = orjson.loads
        option = (
            orjson.OPT_NON_STR_KEYS
            | orjson.OPT_PASSTHROUGH_DATACLASS
            | orjson.OPT_PASSTHROUGH_DATETIME
        )
        def dumps(obj):
            try:
                out = o_dumps(obj, None, option)
            except TypeError:  # orjson.JSONEncodeError is TypeError
                return std_dumps(obj)
            small = len(out) <= _SMALL_OUTPUT
            if small and b"null" not in out:
                return out
            finite = _all_floats_finite(obj)
            if finite or (finite is None and not small and b"null" not in out):
                return out
            return std_dumps(obj)

        def loads(payload):
            try:
                return o_loads(payload)
            except ValueError:  # orjson.JSONDecodeError is a ValueError
                return _std_loads(payload)

        return dumps, loads

    dumps, loads = _make_orjson_codec(_orjson)
