"""``create_program``: a signature built from a string or DSPex V2's field lists, and the
program stored under ``(session_id, program_id)``."""

import re

from .. import errors
from ..programs import STORE, ProgramEntry
from . import InvalidSignature
from .loader import dspy_command
from . import modules
from .values import jsonable, program_id, session_id

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


def _instructions(args, spec):
    candidates = [args.get("instructions")]
    if isinstance(spec, dict):
        candidates += [spec.get("instructions"), spec.get("description")]
    candidates.append(args.get("description"))
    for value in candidates:
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise InvalidSignature(f"instructions must be a string, got {jsonable(value)!r}")
        return value
    return None


def _field_specs(spec, key):
    items = spec.get(key)
    if not isinstance(items, list) or not items:
        raise InvalidSignature(
            f'signature "{key}" must be a non-empty list of field names or '
            f'{{"name", "description"?, "type"?}} objects, got {jsonable(items)!r}'
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
            raise InvalidSignature(f"signature {key}: bad field {jsonable(item)!r}")
        if not isinstance(name, str):
            raise InvalidSignature(f"signature {key}: field without a string name: {jsonable(item)!r}")
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
            f"got {jsonable(spec)!r}"
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


@dspy_command
def create_program(dspy, args):
    """Build a program and store it under ``(session_id, program_id)``.

    Args: ``signature`` (``"question -> answer"``, typed fields allowed:
    ``"text -> n: int"``; or DSPex V2's ``{"inputs": [{"name", "description"?,
    "type"?}], "outputs": [...], "description"?, "name"?}``, plain names allowed
    in the lists); ``program_id`` (V2: ``id``; generated ``"prog_..."`` if
    absent; an existing one is replaced); ``program_type`` or ``type``:
    ``"Predict"`` (default), ``"ChainOfThought"`` (also ``"chain_of_thought"``,
    ``"cot"``), ``"ReAct"`` (with ``tools``: handler function names, or
    ``{"name", "description"?, "args"?}``; ``max_iters``), ``"BestOfN"`` or
    ``"Refine"`` (with ``module``: Predict or ChainOfThought, ``n``, ``reward``: a
    handler function called with ``{"inputs", "outputs"}`` returning a number,
    ``threshold``); ``instructions`` (or ``description``).

    Result: ``{"program_id", "status": "created", "replaced", "session_id",
    "program_type", "signature": {"inputs", "outputs", "instructions"},
    "signature_string"}``; the fields are ``{"name", "description", "type"}``.
    """
    return build_entry(dspy, args).created()


def build_entry(dspy, args):
    """Builds the program ``args`` describe and stores it (replacing one of the same id)."""
    sid = session_id(args)
    pid = program_id(args, generate=True)
    program_type = modules.program_type(args.get("program_type", args.get("type")))
    spec = args.get("signature")
    sig = _build_signature(dspy, spec, _instructions(args, spec))
    if program_type == "ChainOfThought" and "reasoning" in (*sig.input_fields, *sig.output_fields):
        raise InvalidSignature(
            "ChainOfThought adds its own `reasoning` output field; rename the signature's "
            "`reasoning` field"
        )
    module = modules.build(dspy, program_type, sig, args)
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
        definition={k: v for k, v in args.items() if k not in ("session_id", "program_id", "id")},
    )
    entry.replaced = STORE.put(entry)
    return entry
