"""``configure_lm``, and the LM each call runs with: the worker's, a session's, or the
call's own."""

import contextvars
import itertools
import json
import typing

from ..errors import InvalidArguments
from .loader import dspy_command
from .redaction import redacted_options, remember_secrets
from .values import jsonable, session_id

#: Keys of configure_lm that are not forwarded to dspy.LM.
_NOT_LM_KWARGS = frozenset({
    "model", "provider", "session_id", "answers", "follow_examples", "default",
    "disable_history",
})
# DSPex V2 sent {"provider": "google", "model": "gemini-1.5-flash"}.
_PROVIDER_PREFIX = {"google": "gemini"}



class _Configured:
    """The LMs configure_lm set in this worker.

    Each execute_program runs inside ``dspy.context(lm=...)`` with the LM that applies to
    it (its own "lm", its session's, or the worker's), because ``dspy.configure`` may only
    be called from the thread that first called it, and concurrent requests run on many.
    """

    def __init__(self):
        self.pool_lm = None     # the worker's LM
        self.info = None        # what configure_lm last set: {"model", "provider"}
        self.settings = {}      # other dspy settings configure_lm was given (disable_history)
        self.sessions = {}      # session_id -> the LM configured within that session

    def run_settings(self):
        """The dspy settings a program runs with: DSPy's call history is off unless
        configure_lm asked for it. Nothing here reads it, and it kept up to 10,000 calls
        globally, per LM and per program: 58 MB in a worker after 10,000 calls of one
        program, and without bound across the LMs given per call and many programs."""
        return {"disable_history": True, **self.settings}


CONFIGURED = _Configured()


@dspy_command
def configure_lm(dspy, args):
    """Set the worker's LM (all sessions): ``dspy.configure(lm=...)``; or, with a
    ``session_id``, the LM of that session's ``execute_program`` calls only.

    ``{"model": "openai/gpt-4o-mini", ...options}``: ``dspy.LM(model, **options)``
    with every key but ``model``, ``provider``, ``session_id`` and
    ``disable_history`` as an option (``temperature``, ``max_tokens``,
    ``api_base``, ``api_key``, ``cache``, ``num_retries``...).  Keys normally
    come from the environment (``OPENAI_API_KEY``...).  DSPex V2's
    ``{"provider": "google", "model": "gemini-1.5-flash"}`` becomes
    ``"gemini/gemini-1.5-flash"``.  DSPy's call history is off in workers;
    ``"disable_history": false`` keeps it (up to 10000 entries globally, per LM
    and per program).

    ``{"model": "dummy", "answers": [...] | {...}, "default"?: {...},
    "follow_examples"?: bool}``: an offline DummyLM (see ``CyclingDummyLM``).

    Result: ``{"status": "configured", "model", "provider", "temperature",
    "options"}`` (options with secrets as ``"[REDACTED]"``), plus ``"mode"``
    (``"cycle"``, ``"by_prompt"``, ``"follow_examples"``) and ``"answers"``
    (count) for the dummy.
    """
    lm, result, provider, settings = build_lm(dspy, args)
    sid = session_id(args)
    if sid is not None:
        CONFIGURED.sessions[sid] = lm
        return {**result, "session_id": sid}
    CONFIGURED.pool_lm = lm
    CONFIGURED.settings = settings
    CONFIGURED.info = {"model": result["model"], "provider": provider}
    return result


def build_lm(dspy, args):
    """The LM a configure_lm map describes: ``(lm, result, provider, settings)``."""
    remember_secrets(args)
    model = args.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidArguments(
            'configure_lm needs "model": a model string DSPy accepts, such as '
            '"openai/gpt-4o-mini", or "dummy" for the offline DummyLM'
        )
    model = model.strip()
    provider = args.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise InvalidArguments(f"provider must be a string, got {provider!r}")
    settings = {}
    if "disable_history" in args:
        if not isinstance(args["disable_history"], bool):
            raise InvalidArguments("disable_history must be true or false")
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
        # `api_key: System.get_env("OPENAI_API_KEY")` gives nil when the variable is unset;
        # DSPy takes None as an explicit empty key and then never looks at the environment.
        if options.get("api_key", "") is None:
            del options["api_key"]
        lm = dspy.LM(model, **options)
        result = {"status": "configured", "model": model, "provider": provider,
                  "temperature": jsonable(options.get("temperature")),
                  "options": redacted_options(options)}
    return lm, result, provider, settings


# The output fields (name -> annotation) of the program execute_program is
# running, so the dummy LM can fill in fields its scripted answer lacks.
EXPECTED_OUTPUTS = contextvars.ContextVar("dspex_expected_outputs", default=None)
_dummy_class = None


def _dummy_lm(args):
    answers = args.get("answers", [])
    default = args.get("default")
    if default is not None and not isinstance(default, dict):
        raise InvalidArguments('the dummy LM\'s "default" must be an object like {"answer": "..."}')
    if isinstance(answers, list):
        bad = [a for a in answers if not isinstance(a, dict)]
        mode = "cycle"
    elif isinstance(answers, dict):
        bad = [a for a in answers.values() if not isinstance(a, dict)]
        mode = "by_prompt"
    else:
        bad = [answers]
    if bad:
        raise InvalidArguments(
            'the dummy LM\'s "answers" must be a list of objects mapping output field '
            'names to values ([{"answer": "Paris"}], used in turn, cycling) or an object '
            'mapping a prompt substring to such an object ({"France": {"answer": "Paris"}}); '
            f"got {jsonable(bad[0])!r}"
        )
    follow_examples = args.get("follow_examples", False)
    if not isinstance(follow_examples, bool):
        raise InvalidArguments("follow_examples must be true or false")
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
            expected = EXPECTED_OUTPUTS.get()
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


# LMs given per call ("lm" in execute_program), by their configuration: building one per
# call would cost a client each time.
_request_lms = {}


def request_lm(dspy, config):
    if config is None:
        return None
    if not isinstance(config, dict):
        raise InvalidArguments(
            '"lm" must be an object like configure_lm takes, e.g. {"model": "..."}')
    key = json.dumps(config, sort_keys=True, default=str)
    lm = _request_lms.get(key)
    if lm is None:
        lm = build_lm(dspy, config)[0]
        if len(_request_lms) >= 64:
            _request_lms.pop(next(iter(_request_lms)))
        _request_lms[key] = lm
    return lm
