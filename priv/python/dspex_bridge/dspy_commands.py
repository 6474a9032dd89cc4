"""DSPy commands of the worker: configure an LM, create and run programs.

Imported in every worker at start (``commands.EXTENSION_MODULES``), so this
file does not import ``dspy`` at the top: the first command that needs it
imports it (about a second) and keeps the module.  Without DSPy (not
installed, broken, or ``DSPEX_DISABLE_DSPY=1``) ``configure_lm``,
``create_program`` and ``execute_program`` raise ``DSPyUnavailable``; the
bookkeeping commands (list, info, delete, cleanup, reset) and ``get_stats``
keep working on the (then empty) store, so the pool's session clean-up never
fails because of DSPy.

State:

* the LM is worker-wide (``dspy.configure(lm=...)``); the pool re-sends the
  last ``configure_lm`` to every new worker;
* programs live in ``programs.STORE`` under ``(session_id or None,
  program_id)``; ``create_program`` with an existing id replaces the program,
  so the pool can replay a session's ``create_program`` requests verbatim.

Key names follow DSPex V2's ``priv/python/dspy_bridge.py`` (``program_id``,
``signature``, ``inputs``, ``outputs``, ``execution_time``, ``programs``,
``total_count``, ``programs_removed``, ...); every command's docstring gives
its arguments and result.

Errors are the classes below (error ``type``
``"dspex_bridge.dspy_commands.<Class>"``) or ``ValueError`` for malformed
arguments.  API keys are never echoed: ``configure_lm`` reports secret-looking
options as ``"[REDACTED]"``, and an error whose text would contain a known
secret (an ``api_key``-like argument of ``configure_lm`` or an ``*_API_KEY``/
``*_TOKEN``/``*_SECRET`` environment variable) is replaced by a
``RedactedError`` carrying the redacted message and no traceback.
"""

import contextvars
import functools
import importlib.metadata
import itertools
import json
import math
import os
import re
import sys
import time
import typing
import uuid

from . import errors
from .commands import async_variant, command, dspy_disabled, stats_extension, _has_dspy
from .programs import STORE, ProgramEntry


# -- errors ----------------------------------------------------------------------

class DSPyUnavailable(RuntimeError):
    """DSPy is not installed, does not import, or is disabled in this worker."""


class LMNotConfigured(RuntimeError):
    """``execute_program`` before any ``configure_lm``."""


class ProgramNotFound(LookupError):
    """No program with this id in the request's session namespace."""


class InvalidSignature(ValueError):
    """A signature DSPy cannot build, or that the bridge cannot run safely."""


class RedactedError(RuntimeError):
    """An error whose text contained a secret; the message is redacted."""


# -- DSPy, imported on first use ------------------------------------------------

PINNED_DSPY = "3.4.1"
_SETUP_HINT = f"run bin/setup or pip install dspy=={PINNED_DSPY}"

_dspy = None            # the module, once imported
_dspy_error = None      # why it cannot be imported (cached: a worker does not heal)
_dspy_version = None    # from package metadata, for get_stats before the import


def load_dspy():
    """The ``dspy`` module, imported once; ``DSPyUnavailable`` if there is none."""
    global _dspy, _dspy_error
    if _dspy is not None:
        return _dspy
    if dspy_disabled():
        raise DSPyUnavailable(
            "DSPy is disabled in this worker (DSPEX_DISABLE_DSPY is set); "
            "unset DSPEX_DISABLE_DSPY to use the DSPy commands"
        )
    if _dspy_error is None:
        # LiteLLM otherwise downloads its model cost map from GitHub when first
        # used, in every worker, retrying with sleeps when offline; the copy it
        # ships is enough here.  An explicit setting in the environment wins.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            import dspy
        except ModuleNotFoundError as exc:
            if exc.name == "dspy":
                _dspy_error = f"DSPy is not installed in {sys.executable}; {_SETUP_HINT}"
            else:
                _dspy_error = _import_failure(exc)
        except Exception as exc:  # a broken install: missing dependency, bad version...
            _dspy_error = _import_failure(exc)
        else:
            _dspy = dspy
            return dspy
    raise DSPyUnavailable(_dspy_error)


def _import_failure(exc):
    return (
        f"DSPy is installed in {sys.executable} but cannot be imported "
        f"({errors.type_name(exc)}: {errors.message(exc)}); {_SETUP_HINT}"
    )


def _dspy_command(fn):
    """Register ``fn`` as a command that needs DSPy and may see secrets in its errors."""

    @functools.wraps(fn)
    def run(args):
        try:
            return fn(load_dspy(), args)
        except Exception as exc:
            _raise_redacted_if_secret(exc)
            raise

    return command(fn.__name__)(run)


# -- secrets ---------------------------------------------------------------------

REDACTED = "[REDACTED]"
# Option names whose values are credentials: api_key, apiKey, x-api-key,
# token, access_token, aws_secret_access_key, password, Authorization, ...
_SECRET_NAME = re.compile(
    r"(?:^|[_\-.])(?:api_?key|key|secret|secret_access_key|password|passwd|token|"
    r"credentials?|authorization|auth)$|^apikey$|secret",
    re.IGNORECASE,
)
_SECRET_ENV = re.compile(r"(?:KEY|TOKEN|SECRET|PASSWORD|CREDENTIALS?)$|SECRET", re.IGNORECASE)
_seen_secrets = set()   # secret values received by configure_lm


def _is_secret_name(name):
    return isinstance(name, str) and _SECRET_NAME.search(name) is not None


def _remember_secrets(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_secret_name(key) and isinstance(item, str) and len(item) >= 4:
                _seen_secrets.add(item)
            else:
                _remember_secrets(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _remember_secrets(item)


def _known_secrets():
    found = set(_seen_secrets)
    for name, value in os.environ.items():
        if _SECRET_ENV.search(name) and len(value) >= 8:
            found.add(value)
    return found


def _redact_text(text, secrets):
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _raise_redacted_if_secret(exc):
    secrets = _known_secrets()
    if not secrets:
        return
    message = errors.message(exc)
    text = message + errors.format_traceback(exc)
    if not any(secret in text for secret in secrets):
        return
    raise RedactedError(
        f"{errors.type_name(exc)}: {_redact_text(message, secrets)} "
        f"(traceback withheld: it contained a secret)"
    ) from None


def _redacted_options(options):
    """JSON-able copy of LM options with credential values replaced."""
    if isinstance(options, dict):
        return {
            str(k): REDACTED if _is_secret_name(k) else _redacted_options(v)
            for k, v in options.items()
        }
    if isinstance(options, (list, tuple)):
        return [_redacted_options(v) for v in options]
    return _jsonable(options)


# -- argument helpers ------------------------------------------------------------

def _session_id(args):
    sid = args.get("session_id")
    if sid is None:
        return None
    if not isinstance(sid, str) or not sid:
        raise ValueError(
            f"session_id must be a non-empty string (or absent for the anonymous "
            f"namespace), got {sid!r}"
        )
    return sid


def _program_id(args, generate=False):
    # "program_id" is this bridge's (and the pool's) key; "id" is what DSPex V2's
    # create_program took, honoured when "program_id" is absent.
    pid = args.get("program_id")
    if pid is None:
        pid = args.get("id")
    if pid is None:
        if generate:
            return "prog_" + uuid.uuid4().hex[:16]
        raise ValueError('this command needs "program_id"')
    if not isinstance(pid, str) or not pid:
        raise ValueError(f"program_id must be a non-empty string, got {pid!r}")
    return pid


def _where(session_id):
    if session_id is None:
        return "the anonymous namespace (requests without session_id)"
    return f"session {session_id!r}"


def _entry(args):
    sid = _session_id(args)
    pid = _program_id(args)
    entry = STORE.get(sid, pid)
    if entry is None:
        ids = STORE.ids(sid)
        if ids:
            shown = ", ".join(repr(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
            known = f"it has {len(ids)}: {shown}"
        else:
            known = "it has no programs"
        raise ProgramNotFound(
            f"program {pid!r} not found in {_where(sid)} of this worker ({known}); "
            f"create it with create_program first"
        )
    return entry


def _jsonable(value):
    """Prediction values as JSON: pydantic models dumped, unknown objects as str()."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return _jsonable(dump(mode="json"))
        except Exception:
            pass
    return str(value)


# -- configure_lm ----------------------------------------------------------------

#: Keys of configure_lm that are not forwarded to dspy.LM.
_NOT_LM_KWARGS = frozenset({
    "model", "provider", "session_id", "answers", "follow_examples", "default",
    "disable_history",
})
# DSPex V2 sent {"provider": "google", "model": "gemini-1.5-flash"}.
_PROVIDER_PREFIX = {"google": "gemini"}

_lm_info = None  # what configure_lm last set: {"model", "provider"}
# The worker's LM, set by configure_lm. Each execute_program runs inside
# dspy.context(lm=...) with the LM that applies to it (its own "lm", its session's, or this
# one), because dspy.configure may only be called from the thread that first called it, and
# concurrent requests run on many.
_pool_lm = None
_pool_settings = {}  # other dspy settings configure_lm was given (disable_history)
# LMs configured within a session (configure_lm with a session_id): session_id -> LM.
_session_lms = {}


@_dspy_command
def configure_lm(dspy, args):
    """Set the worker's LM (all sessions): ``dspy.configure(lm=...)``; or, with a
    ``session_id``, the LM of that session's ``execute_program`` calls only.

    ``{"model": "openai/gpt-4o-mini", ...options}``: ``dspy.LM(model, **options)``
    with every key but ``model``, ``provider``, ``session_id`` and
    ``disable_history`` as an option (``temperature``, ``max_tokens``,
    ``api_base``, ``api_key``, ``cache``, ``num_retries``...).  Keys normally
    come from the environment (``OPENAI_API_KEY``...).  DSPex V2's
    ``{"provider": "google", "model": "gemini-1.5-flash"}`` becomes
    ``"gemini/gemini-1.5-flash"``.  ``"disable_history": true`` stops DSPy
    keeping its (up to 10000 entries) call history.

    ``{"model": "dummy", "answers": [...] | {...}, "default"?: {...},
    "follow_examples"?: bool}``: an offline DummyLM (see ``CyclingDummyLM``).

    Result: ``{"status": "configured", "model", "provider", "temperature",
    "options"}`` (options with secrets as ``"[REDACTED]"``), plus ``"mode"``
    (``"cycle"``, ``"by_prompt"``, ``"follow_examples"``) and ``"answers"``
    (count) for the dummy.
    """
    global _lm_info, _pool_lm
    lm, result, provider, settings = _build_lm(dspy, args)
    sid = _session_id(args)
    if sid is not None:
        _session_lms[sid] = lm
        return {**result, "session_id": sid}
    _pool_lm = lm
    _pool_settings.clear()
    _pool_settings.update(settings)
    _lm_info = {"model": result["model"], "provider": provider}
    return result


def _build_lm(dspy, args):
    """The LM a configure_lm map describes: ``(lm, result, provider, settings)``."""
    _remember_secrets(args)
    model = args.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ValueError(
            'configure_lm needs "model": a model string DSPy accepts, such as '
            '"openai/gpt-4o-mini", or "dummy" for the offline DummyLM'
        )
    model = model.strip()
    provider = args.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise ValueError(f"provider must be a string, got {provider!r}")
    settings = {}
    if "disable_history" in args:
        if not isinstance(args["disable_history"], bool):
            raise ValueError("disable_history must be true or false")
        settings["disable_history"] = args["disable_history"]

    if model.lower() == "dummy":
        lm, dummy = _dummy_lm(args)
        result = {"status": "configured", "model": "dummy", "provider": "dummy",
                  "temperature": None, "options": {}, **dummy}
        provider = "dummy"
    else:
        if provider and "/" not in model:
            model = f"{_PROVIDER_PREFIX.get(provider.lower(), provider)}/{model}"
        provider = provider or (model.split("/", 1)[0] if "/" in model else None)
        options = {k: v for k, v in args.items() if k not in _NOT_LM_KWARGS}
        lm = dspy.LM(model, **options)
        result = {"status": "configured", "model": model, "provider": provider,
                  "temperature": _jsonable(options.get("temperature")),
                  "options": _redacted_options(options)}
    return lm, result, provider, settings


# The output fields (name -> annotation) of the program execute_program is
# running, so the dummy LM can fill in fields its scripted answer lacks.
_expected_outputs = contextvars.ContextVar("dspex_expected_outputs", default=None)
_dummy_class = None


def _dummy_lm(args):
    answers = args.get("answers", [])
    default = args.get("default")
    if default is not None and not isinstance(default, dict):
        raise ValueError('the dummy LM\'s "default" must be an object like {"answer": "..."}')
    if isinstance(answers, list):
        bad = [a for a in answers if not isinstance(a, dict)]
        mode = "cycle"
    elif isinstance(answers, dict):
        bad = [a for a in answers.values() if not isinstance(a, dict)]
        mode = "by_prompt"
    else:
        bad = [answers]
    if bad:
        raise ValueError(
            'the dummy LM\'s "answers" must be a list of objects mapping output field '
            'names to values ([{"answer": "Paris"}], used in turn, cycling) or an object '
            'mapping a prompt substring to such an object ({"France": {"answer": "Paris"}}); '
            f"got {_jsonable(bad[0])!r}"
        )
    follow_examples = args.get("follow_examples", False)
    if not isinstance(follow_examples, bool):
        raise ValueError("follow_examples must be true or false")
    if follow_examples:
        mode = "follow_examples"
    lm = _get_dummy_class()(answers, follow_examples=follow_examples, default=default)
    return lm, {"mode": mode, "answers": len(answers)}


def _get_dummy_class():
    global _dummy_class
    if _dummy_class is not None:
        return _dummy_class
    from dspy.utils.dummies import DummyLM

    class CyclingDummyLM(DummyLM):
        """``dspy.utils.DummyLM`` whose answers never run out.

        DSPy 3.4.1's DummyLM walks a list of answers once and then replies
        ``{"answer": "No more responses"}``; with a dict it replies with the
        first entry whose key occurs in the prompt's last message, else the
        bare text "No more responses" (a parse error).  Here a list cycles
        forever, a dict falls back to ``default`` (or ``answers[""]``), and,
        inside ``execute_program``, output fields missing from the chosen
        answer get a placeholder (``"dummy reasoning"`` for ChainOfThought's
        ``reasoning``), so one answer list serves Predict and ChainOfThought
        programs alike.
        """

        def __init__(self, answers, follow_examples=False, default=None):
            fallback = {} if default is None else dict(default)
            if isinstance(answers, dict):
                table = {k: v for k, v in answers.items() if k != ""}
                # "" occurs in every prompt, and the first matching key wins.
                table[""] = answers.get("", fallback)
                super().__init__(table, follow_examples=follow_examples)
            else:
                super().__init__([], follow_examples=follow_examples)
                self.answers = itertools.cycle([dict(a) for a in answers] or [fallback])

        def _format_answer_fields(self, field_names_and_values):
            expected = _expected_outputs.get()
            if expected:
                values = {name: field_names_and_values[name] if name in field_names_and_values
                          else _placeholder(name, annotation)
                          for name, annotation in expected.items()}
                for name, value in field_names_and_values.items():
                    values.setdefault(name, value)
                field_names_and_values = values
            return super()._format_answer_fields(field_names_and_values)

    _dummy_class = CyclingDummyLM
    return _dummy_class


def _placeholder(name, annotation):
    origin = typing.get_origin(annotation) or annotation
    if origin is bool:
        return False
    if origin in (int, float):
        return 0
    if origin in (list, tuple, set, frozenset):
        return []
    if origin is dict:
        return {}
    if origin is typing.Literal:
        return typing.get_args(annotation)[0]
    return f"dummy {name}"


# -- create_program --------------------------------------------------------------

_PROGRAM_TYPES = {
    "predict": "Predict",
    "chainofthought": "ChainOfThought",
    "cot": "ChainOfThought",
}
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# Keyword arguments dspy.Predict takes for itself: an input so named would vanish.
_RESERVED_INPUTS = frozenset({"signature", "demos", "config", "lm"})
# Field "type" spellings of DSPex V2 and JSON Schema; anything else is parsed
# as a Python annotation by DSPy ("list[str]", "Literal['a', 'b']", ...).
_TYPE_ALIASES = {
    "string": str, "str": str, "text": str,
    "integer": int, "int": int,
    "float": float, "number": float,
    "boolean": bool, "bool": bool,
    "list": list, "array": list,
    "dict": dict, "map": dict, "object": dict,
}


def _program_type(args):
    value = args.get("program_type", args.get("type"))
    if value is None:
        return "Predict"
    if isinstance(value, str):
        key = re.sub(r"[\s_\-.]", "", value).lower()
        if key.startswith("dspy"):
            key = key[4:]
        if key in _PROGRAM_TYPES:
            return _PROGRAM_TYPES[key]
    raise ValueError(
        f"unsupported program_type {value!r}: use \"Predict\" (or \"predict\") or "
        f"\"ChainOfThought\" (or \"chain_of_thought\")"
    )


def _instructions(args, spec):
    candidates = [args.get("instructions")]
    if isinstance(spec, dict):
        candidates += [spec.get("instructions"), spec.get("description")]
    candidates.append(args.get("description"))
    for value in candidates:
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise InvalidSignature(f"instructions must be a string, got {_jsonable(value)!r}")
        return value
    return None


def _field_specs(spec, key):
    items = spec.get(key)
    if not isinstance(items, list) or not items:
        raise InvalidSignature(
            f'signature "{key}" must be a non-empty list of field names or '
            f'{{"name", "description"?, "type"?}} objects, got {_jsonable(items)!r}'
        )
    out = []
    for item in items:
        if isinstance(item, str):
            name, desc, type_ = item, None, None
        elif isinstance(item, dict):
            name = item.get("name")
            desc = item.get("description", item.get("desc"))
            type_ = item.get("type")
        else:
            raise InvalidSignature(f"signature {key}: bad field {_jsonable(item)!r}")
        if not isinstance(name, str):
            raise InvalidSignature(f"signature {key}: field without a string name: {_jsonable(item)!r}")
        if desc is not None and not isinstance(desc, str):
            raise InvalidSignature(f"field {name!r}: description must be a string")
        if type_ is not None and not isinstance(type_, str):
            raise InvalidSignature(f"field {name!r}: type must be a string such as \"str\"")
        out.append((name, desc, type_))
    return out


def _annotation(dspy, name, type_):
    if type_ is None:
        return str
    alias = _TYPE_ALIASES.get(type_.strip().lower())
    if alias is not None:
        return alias
    try:
        return dspy.Signature(f"x: {type_} -> y", "", custom_types={}).input_fields["x"].annotation
    except Exception:
        raise InvalidSignature(
            f"field {name!r}: unsupported type {type_!r} (use str, int, float, bool, "
            f"list[str], dict[str, int], Literal['a', 'b'], ...)"
        ) from None


def _build_signature(dspy, spec, instructions):
    if isinstance(spec, str):
        try:
            sig = dspy.Signature(spec, instructions, custom_types={})
        except Exception as exc:
            raise InvalidSignature(f"invalid signature {spec!r}: {errors.message(exc)}") from None
    elif isinstance(spec, dict):
        fields = {}
        for kind, maker in (("inputs", dspy.InputField), ("outputs", dspy.OutputField)):
            for name, desc, type_ in _field_specs(spec, kind):
                if not _FIELD_NAME.match(name):
                    raise InvalidSignature(
                        f"field name {name!r} is not an identifier (letters, digits and _, "
                        f"starting with a letter)"
                    )
                if name in fields:
                    raise InvalidSignature(f"field {name!r} appears twice in the signature")
                field = maker(desc=desc) if desc else maker()
                fields[name] = (_annotation(dspy, name, type_), field)
        raw_name = spec.get("name")
        class_name = "DSPexSignature"
        if isinstance(raw_name, str) and raw_name.strip():
            class_name = re.sub(r"\W|^(?=\d)", "_", raw_name.strip().split(".")[-1]) or class_name
        try:
            sig = dspy.Signature(fields, instructions, signature_name=class_name)
        except Exception as exc:
            raise InvalidSignature(f"invalid signature: {errors.message(exc)}") from None
    else:
        raise InvalidSignature(
            'signature must be a string like "question -> answer" or an object '
            '{"inputs": [{"name": "question", "description": "..."}], "outputs": [...]}, '
            f"got {_jsonable(spec)!r}"
        )
    if not sig.input_fields or not sig.output_fields:
        raise InvalidSignature(
            f"signature {sig.signature!r} needs at least one input and one output field"
        )
    for name in (*sig.input_fields, *sig.output_fields):
        if not _FIELD_NAME.match(name):
            raise InvalidSignature(f"field name {name!r} is not supported (letters, digits and _)")
    reserved = sorted(_RESERVED_INPUTS.intersection(sig.input_fields))
    if reserved:
        raise InvalidSignature(
            f"input field name(s) {', '.join(reserved)} are keyword arguments of dspy.Predict; "
            f"rename them"
        )
    return sig


def _field_list(fields):
    out = []
    for name, field in fields.items():
        annotation = field.annotation
        type_name = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        desc = (field.json_schema_extra or {}).get("desc")
        if desc in ("", f"${{{name}}}"):
            desc = None
        out.append({"name": name, "description": desc,
                    "type": type_name.replace("typing.", "")})
    return out


@_dspy_command
def create_program(dspy, args):
    """Build a program and store it under ``(session_id, program_id)``.

    Args: ``signature`` (``"question -> answer"``, typed fields allowed:
    ``"text -> n: int"``; or DSPex V2's ``{"inputs": [{"name", "description"?,
    "type"?}], "outputs": [...], "description"?, "name"?}``, plain names allowed
    in the lists); ``program_id`` (V2: ``id``; generated ``"prog_..."`` if
    absent; an existing one is replaced); ``program_type`` or ``type``:
    ``"Predict"`` (default) or ``"ChainOfThought"`` (also ``"predict"``,
    ``"chain_of_thought"``, ``"cot"``); ``instructions`` (or ``description``).

    Result: ``{"program_id", "status": "created", "replaced", "session_id",
    "program_type", "signature": {"inputs", "outputs", "instructions"},
    "signature_string"}``; the fields are ``{"name", "description", "type"}``.
    """
    sid = _session_id(args)
    pid = _program_id(args, generate=True)
    program_type = _program_type(args)
    spec = args.get("signature")
    sig = _build_signature(dspy, spec, _instructions(args, spec))
    if program_type == "ChainOfThought" and "reasoning" in (*sig.input_fields, *sig.output_fields):
        raise InvalidSignature(
            "ChainOfThought adds its own `reasoning` output field; rename the signature's "
            "`reasoning` field"
        )
    module = getattr(dspy, program_type)(sig)
    entry = ProgramEntry(
        session_id=sid,
        program_id=pid,
        program_type=program_type,
        module=module,
        signature={"inputs": _field_list(sig.input_fields),
                   "outputs": _field_list(sig.output_fields),
                   "instructions": sig.instructions},
        signature_string=sig.signature,
        input_names=tuple(sig.input_fields),
        output_types={name: field.annotation
                      for predictor in module.predictors()
                      for name, field in predictor.signature.output_fields.items()},
    )
    replaced = STORE.put(entry)
    return {
        "program_id": pid,
        "status": "created",
        "replaced": replaced,
        "session_id": sid,
        "program_type": program_type,
        "signature": entry.signature,
        "signature_string": entry.signature_string,
    }


# -- execute_program -------------------------------------------------------------

@_dspy_command
def execute_program(dspy, args):
    """Run a stored program: ``{"program_id", "inputs": {...}}``.

    ``inputs`` must name exactly the signature's input fields.  Result:
    ``{"program_id", "outputs", "execution_time"}``: ``outputs`` holds every
    field of the prediction (ChainOfThought's ``reasoning`` first), and
    ``execution_time`` is the program's run time in seconds (DSPex V2 sent a
    timestamp under this name).
    """
    entry, inputs, lm = _prepare_execution(dspy, args)
    token = _expected_outputs.set(entry.output_types)
    started = time.perf_counter()
    try:
        with dspy.context(lm=lm, **_pool_settings):
            prediction = entry.module(**inputs)
    finally:
        elapsed = time.perf_counter() - started
        _expected_outputs.reset(token)
    return _execution_result(entry, prediction, elapsed)


@async_variant("execute_program")
async def aexecute_program(args):
    """``execute_program`` for a worker serving requests concurrently: the program runs as
    a task (``acall``), so a cancelled request abandons its LM call and closes its
    connection."""
    try:
        dspy = load_dspy()
        entry, inputs, lm = _prepare_execution(dspy, args)
        token = _expected_outputs.set(entry.output_types)
        started = time.perf_counter()
        try:
            with dspy.context(lm=lm, **_pool_settings):
                prediction = await entry.module.acall(**inputs)
        finally:
            elapsed = time.perf_counter() - started
            _expected_outputs.reset(token)
    except Exception as exc:
        _raise_redacted_if_secret(exc)
        raise
    return _execution_result(entry, prediction, elapsed)


def _prepare_execution(dspy, args):
    """The program, its checked inputs, and the LM this call runs with: its own ``lm``
    (a configure_lm map), else its session's, else the worker's."""
    entry = _entry(args)
    inputs = args.get("inputs", {})
    if not isinstance(inputs, dict):
        raise ValueError(f'"inputs" must be an object of input fields, got {_jsonable(inputs)!r}')
    missing = [name for name in entry.input_names if name not in inputs]
    unknown = sorted(name for name in inputs if name not in entry.input_names)
    if missing or unknown:
        problems = []
        if missing:
            problems.append("missing " + ", ".join(missing))
        if unknown:
            problems.append("unknown " + ", ".join(str(n) for n in unknown))
        raise ValueError(
            f"program {entry.program_id!r} takes inputs {', '.join(entry.input_names)}: "
            + "; ".join(problems)
        )
    lm = _request_lm(dspy, args.get("lm"))
    if lm is None:
        lm = _session_lms.get(entry.session_id) or _pool_lm
    if lm is None:
        raise LMNotConfigured(
            "no language model is configured in this worker: call configure_lm first, e.g. "
            '{"model": "openai/gpt-4o-mini"} (key from OPENAI_API_KEY) or '
            '{"model": "dummy", "answers": [{"answer": "..."}]}, or pass "lm" with the call'
        )
    return entry, inputs, lm


# LMs given per call ("lm" in execute_program), by their configuration: building one per
# call would cost a client each time.
_request_lms = {}


def _request_lm(dspy, config):
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ValueError('"lm" must be an object like configure_lm takes, e.g. {"model": "..."}')
    key = json.dumps(config, sort_keys=True, default=str)
    lm = _request_lms.get(key)
    if lm is None:
        lm = _build_lm(dspy, config)[0]
        if len(_request_lms) >= 64:
            _request_lms.pop(next(iter(_request_lms)))
        _request_lms[key] = lm
    return lm


def _execution_result(entry, prediction, elapsed):
    entry.execution_count += 1
    entry.last_executed = time.time()
    return {
        "program_id": entry.program_id,
        "outputs": {str(k): _jsonable(v) for k, v in prediction.items()},
        "execution_time": elapsed,
    }


# -- bookkeeping (no DSPy needed) ------------------------------------------------

@command
def list_programs(args):
    """The programs of the request's session (or of the anonymous namespace).

    Result: ``{"programs": [info, ...], "total_count", "session_id"}``, oldest
    first, each item as ``get_program_info``'s result.
    """
    sid = _session_id(args)
    programs = [entry.describe() for entry in STORE.entries(sid)]
    return {"programs": programs, "total_count": len(programs), "session_id": sid}


@command
def get_program_info(args):
    """``{"program_id"}`` -> ``{"program_id", "id", "session_id", "program_type",
    "signature", "signature_string", "created_at", "execution_count",
    "last_executed"}`` (times: Unix seconds; ``last_executed`` null until run)."""
    return _entry(args).describe()


@command
def delete_program(args):
    """``{"program_id"}`` -> ``{"program_id", "status": "deleted", "session_id"}``."""
    entry = _entry(args)
    STORE.delete(entry.session_id, entry.program_id)
    return {"program_id": entry.program_id, "status": "deleted", "session_id": entry.session_id}


@command
def cleanup_session(args):
    """``{"session_id"}`` -> ``{"status": "cleaned", "session_id", "programs_removed"}``.

    Drops every program of the session (0 if it had none) and its own LM, if it
    configured one; the worker's LM is untouched.
    """
    if args.get("session_id") is None:
        raise ValueError('cleanup_session needs "session_id"')
    sid = _session_id(args)
    _session_lms.pop(sid, None)
    return {"status": "cleaned", "session_id": sid, "programs_removed": STORE.drop_session(sid)}


@command
def reset_state(args):
    """Drop the programs of every session and of the anonymous namespace.

    The LM stays configured unless ``"reset_lm": true`` (the pool sends
    ``configure_lm`` only to new workers, so a reset worker keeps serving).
    Result: ``{"status": "reset", "programs_cleared", "sessions_cleared",
    "lm_reset"}``.
    """
    global _lm_info, _pool_lm
    reset_lm = args.get("reset_lm", False)
    if not isinstance(reset_lm, bool):
        raise ValueError("reset_lm must be true or false")
    programs, sessions = STORE.clear()
    _session_lms.clear()
    if reset_lm:
        _pool_lm = None
        _lm_info = None
    return {"status": "reset", "programs_cleared": programs, "sessions_cleared": sessions,
            "lm_reset": reset_lm}


@stats_extension
def _dspy_stats():
    """Keys added to ``get_stats``: ``programs_count``, ``sessions_count`` (named
    sessions holding programs), ``lm_configured``, ``model``, ``dspy_available``,
    ``dspy_loaded`` (imported yet), ``dspy_version``.  Never imports DSPy."""
    programs, sessions = STORE.counts()
    stats = {"programs_count": programs, "sessions_count": sessions, "lm_configured": False,
             "model": None, "dspy_available": False, "dspy_loaded": False, "dspy_version": None}
    try:
        if dspy_disabled() or (_dspy is None and _dspy_error is not None):
            return stats
        stats["dspy_available"] = _has_dspy()
        dspy = sys.modules.get("dspy")  # imported by us or by a user handler
        if dspy is not None:
            stats["dspy_loaded"] = True
            stats["dspy_version"] = getattr(dspy, "__version__", None)
            lm = _pool_lm
            if lm is not None:
                stats["lm_configured"] = True
                stats["model"] = (_lm_info or {}).get("model") or getattr(lm, "model", None)
        elif stats["dspy_available"]:
            stats["dspy_version"] = _installed_version()
    except Exception as exc:  # get_stats is a health check: never fail it
        stats["dspy_stats_error"] = f"{errors.type_name(exc)}: {errors.message(exc)}"
    return stats


def _installed_version():
    global _dspy_version
    if _dspy_version is None:
        try:
            _dspy_version = importlib.metadata.version("dspy")
        except Exception:
            _dspy_version = ""
    return _dspy_version or None
