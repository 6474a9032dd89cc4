"""``execute_program``: a stored program run with the LM that applies to the call, plain or
(in a concurrent worker) as a cancellable task."""

import time

from ..errors import InvalidArguments
from ..commands import async_variant
from . import accounting
from . import LMNotConfigured
from .lm import CONFIGURED, EXPECTED_OUTPUTS, request_lm
from .lm_errors import classify
from .loader import dspy_command, load_dspy
from .redaction import raise_redacted_if_secret
from .values import entry as find_entry, jsonable

@dspy_command
def execute_program(dspy, args):
    """Run a stored program: ``{"program_id", "inputs": {...}}``.

    ``inputs`` must name exactly the signature's input fields.  Result:
    ``{"program_id", "outputs", "execution_time", "usage", "cached"}``: ``outputs``
    holds every field of the prediction (ChainOfThought's ``reasoning`` first),
    ``execution_time`` is the program's run time in seconds (DSPex V2 sent a
    timestamp under this name), ``usage`` maps each model that reported tokens to
    ``{"prompt_tokens", "completion_tokens", "total_tokens"}``, and ``cached`` is
    true when every LM call was answered from DSPy's cache.
    """
    entry, inputs, lm = _prepare_execution(dspy, args)
    if args.get("stream") is True:
        return _streaming(dspy, entry, inputs, lm)
    with _Execution(dspy, entry, lm) as run:
        prediction = entry.module(**inputs)
    return run.result(prediction)


def _streaming(dspy, entry, inputs, lm):
    """``execute_program`` with ``"stream": true``: the output fields' tokens as they come
    (``{"field", "text"}``) and DSPy's status messages (``{"status"}``), through
    ``dspy.streamify``; the result is ``execute_program``'s."""
    from dspy.streaming import StatusMessage, StreamListener, StreamResponse

    listeners = [StreamListener(signature_field_name=name) for name in _streamed_fields(entry)]
    program = dspy.streamify(entry.module, stream_listeners=listeners, async_streaming=False)
    prediction = None
    with _Execution(dspy, entry, lm) as run:
        for item in program(**inputs):
            if isinstance(item, StreamResponse):
                yield {"field": item.signature_field_name, "text": item.chunk}
            elif isinstance(item, StatusMessage):
                yield {"status": item.message}
            elif isinstance(item, dspy.Prediction):
                prediction = item
    if prediction is None:
        raise RuntimeError("the streamed program ended without a prediction")
    return run.result(prediction)


def _streamed_fields(entry):
    """The output fields of the program's last predictor: what its answer is made of."""
    predictors = entry.module.predictors()
    return list(predictors[-1].signature.output_fields) if predictors else []

@async_variant("execute_program")
async def aexecute_program(args):
    """``execute_program`` for a worker serving requests concurrently: the program runs as
    a task (``acall``), so a cancelled request abandons its LM call and closes its
    connection."""
    try:
        dspy = load_dspy()
        entry, inputs, lm = _prepare_execution(dspy, args)
        with _Execution(dspy, entry, lm) as run:
            prediction = await entry.module.acall(**inputs)
    except Exception as exc:
        classify(exc)
        raise_redacted_if_secret(exc)
        raise
    return run.result(prediction)


class _Execution:
    """One run of a program, plain or as a task: inside ``dspy.context`` with its LM and
    the worker's settings, counting its tokens and cache hits, timed."""

    def __init__(self, dspy, entry, lm):
        self.dspy, self.entry, self.lm = dspy, entry, lm
        self.tracker, self.counter = accounting.start(dspy)

    def __enter__(self):
        self.token = EXPECTED_OUTPUTS.set(self.entry.output_types)
        settings = accounting.context_settings(self.dspy, self.tracker, self.counter)
        self.context = self.dspy.context(lm=self.lm, **CONFIGURED.run_settings(), **settings)
        self.context.__enter__()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        self.elapsed = time.perf_counter() - self.started
        try:
            return self.context.__exit__(*exc_info)
        finally:
            EXPECTED_OUTPUTS.reset(self.token)

    def result(self, prediction):
        cost = accounting.report(self.tracker, self.counter)
        return _execution_result(self.entry, prediction, self.elapsed, cost)


def _prepare_execution(dspy, args):
    """The program, its checked inputs, and the LM this call runs with: its own ``lm``
    (a configure_lm map), else its session's, else the worker's."""
    entry = find_entry(args)
    inputs = args.get("inputs", {})
    if not isinstance(inputs, dict):
        raise InvalidArguments(
            f'"inputs" must be an object of input fields, got {jsonable(inputs)!r}')
    missing = [name for name in entry.input_names if name not in inputs]
    unknown = sorted(name for name in inputs if name not in entry.input_names)
    if missing or unknown:
        problems = []
        if missing:
            problems.append("missing " + ", ".join(missing))
        if unknown:
            problems.append("unknown " + ", ".join(str(n) for n in unknown))
        raise InvalidArguments(
            f"program {entry.program_id!r} takes inputs {', '.join(entry.input_names)}: "
            + "; ".join(problems)
        )
    lm = request_lm(dspy, args.get("lm"))
    if lm is None:
        lm = CONFIGURED.sessions.get(entry.session_id) or CONFIGURED.pool_lm
    if lm is None:
        raise LMNotConfigured(
            "no language model is configured in this worker: call configure_lm first, e.g. "
            '{"model": "openai/gpt-4o-mini"} (key from OPENAI_API_KEY) or '
            '{"model": "dummy", "answers": [{"answer": "..."}]}, or pass "lm" with the call'
        )
    return entry, inputs, lm


def _execution_result(entry, prediction, elapsed, cost):
    entry.execution_count += 1
    entry.last_executed = time.time()
    return {
        "program_id": entry.program_id,
        "outputs": {str(k): jsonable(v) for k, v in prediction.items()},
        "execution_time": elapsed,
        **cost,
    }
