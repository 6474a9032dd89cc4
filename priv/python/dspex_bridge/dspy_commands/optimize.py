"""Measuring and improving a program on examples: ``evaluate`` and ``optimize``. The metric
is a function of the pool's handler module, called with ``{"example", "prediction"}`` and
returning a number or a boolean."""

import random
import time

from ..errors import InvalidArguments
from ..programs import STORE
from .lm import CONFIGURED
from .loader import dspy_command
from .modules import callable_named
from .values import entry, jsonable

_OPTIMIZERS = ("BootstrapFewShot", "LabeledFewShot")


@dspy_command
def evaluate(dspy, args):
    """``{"program_id", "devset": [example], "metric", "max_errors"?}`` -> ``{"score",
    "count", "errors"}``: the metric's average over the examples, as a percentage rounded as
    DSPy's ``Evaluate`` rounds it. An example is an object with the signature's input fields
    and the expected outputs. An example whose program fails scores 0; the evaluation stops
    with the error once ``max_errors`` (default: DSPy's setting, 10) have failed. Streamed,
    it sends ``{"done", "total", "score", "errors"}`` after each example."""
    found = entry(args)
    devset = _examples(dspy, args, "devset", found)
    metric = _metric(args.get("metric"))
    max_errors = _count(args, "max_errors", dspy.settings.max_errors or 10)
    total, points, failed = len(devset), 0.0, 0
    with dspy.context(lm=_lm(found), **CONFIGURED.run_settings()):
        for done, example in enumerate(devset, 1):
            try:
                prediction = found.module(**example.inputs())
            except Exception:
                failed += 1
                if failed >= max_errors:
                    raise
            else:
                points += float(metric(example, prediction))
            yield {"done": done, "total": total, "score": _percent(points, done),
                   "errors": failed}
    return {"score": _percent(points, total), "count": total, "errors": failed}


@dspy_command
def optimize(dspy, args):
    """``{"program_id", "optimizer": "BootstrapFewShot" | "LabeledFewShot", "trainset",
    "metric", "max_bootstrapped_demos"?, "max_labeled_demos"?, "optimized_program_id"?}``:
    compiles a copy of the program and stores it as a new program (default id
    ``<program_id>_optimized``). Result: ``{"program_id", "demos", "elapsed", "definition",
    "state"}``, the last two as ``save_program`` gives them (the pool loads them into its
    other workers). Streamed, it sends ``{"done", "total", "bootstrapped"}`` after each
    training example it tried."""
    found = entry(args)
    trainset = _examples(dspy, args, "trainset", found)
    name = args.get("optimizer", "BootstrapFewShot")
    if name not in _OPTIMIZERS:
        raise InvalidArguments(
            f"optimizer must be one of {', '.join(_OPTIMIZERS)}, got {jsonable(name)!r}")
    new_id = args.get("optimized_program_id") or f"{found.program_id}_optimized"
    if not isinstance(new_id, str) or not new_id:
        raise InvalidArguments("optimized_program_id must be a non-empty string")
    options = {k: args[k] for k in ("max_bootstrapped_demos", "max_labeled_demos") if k in args}
    started = time.perf_counter()
    with dspy.context(lm=_lm(found), **CONFIGURED.run_settings()):
        if name == "LabeledFewShot":
            optimizer = dspy.LabeledFewShot(k=options.get("max_labeled_demos", 16))
            compiled = optimizer.compile(found.module.deepcopy(), trainset=trainset)
            yield {"done": len(trainset), "total": len(trainset), "bootstrapped": 0}
        else:
            optimizer = dspy.BootstrapFewShot(metric=_metric(args.get("metric")), **options)
            compiled = yield from _bootstrap(optimizer, found.module.deepcopy(), trainset)
    optimized = _copy_entry(found, new_id, compiled)
    STORE.put(optimized)
    demos = sum(len(getattr(p, "demos", [])) for p in compiled.predictors())
    return {"program_id": new_id, "demos": demos, "elapsed": time.perf_counter() - started,
            "definition": found.definition, "state": jsonable(compiled.dump_state())}


def _bootstrap(optimizer, student, trainset):
    """``BootstrapFewShot.compile`` of DSPy 3.4.1 taken step by step, so that each training
    example it tries can be reported; its own ``compile`` where those steps are missing."""
    steps = ("_prepare_student_and_teacher", "_prepare_predictor_mappings",
             "_bootstrap_one_example", "_train")
    if not all(hasattr(optimizer, step) for step in steps):
        compiled = optimizer.compile(student, trainset=trainset)
        yield {"done": len(trainset), "total": len(trainset), "bootstrapped": None}
        return compiled
    optimizer.trainset = trainset
    optimizer._prepare_student_and_teacher(student, None)
    optimizer._prepare_predictor_mappings()
    optimizer.name2traces = {name: [] for name in optimizer.name2predictor}
    bootstrapped = set()
    for index, example in enumerate(trainset):
        if len(bootstrapped) >= optimizer.max_bootstrapped_demos:
            break
        for round_index in range(optimizer.max_rounds):
            if optimizer._bootstrap_one_example(example, round_index):
                bootstrapped.add(index)
                break
        yield {"done": index + 1, "total": len(trainset), "bootstrapped": len(bootstrapped)}
    optimizer.validation = [x for i, x in enumerate(trainset) if i not in bootstrapped]
    random.Random(0).shuffle(optimizer.validation)
    compiled = optimizer._train()
    compiled._compiled = True
    return compiled


def _percent(points, count):
    return round(100 * points / count, 2) if count else 0.0


def _count(args, key, default):
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArguments(f'"{key}" must be a positive integer, got {jsonable(value)!r}')
    return value


def _lm(found):
    lm = CONFIGURED.sessions.get(found.session_id) or CONFIGURED.pool_lm
    if lm is None:
        from . import LMNotConfigured

        raise LMNotConfigured("no language model is configured in this worker: call configure_lm first")
    return lm


def _examples(dspy, args, key, found):
    items = args.get(key)
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise InvalidArguments(f'"{key}" must be a non-empty list of objects with the input fields '
                               f'({", ".join(found.input_names)}) and the expected outputs')
    return [dspy.Example(**item).with_inputs(*found.input_names) for item in items]


def _metric(name):
    if not isinstance(name, str):
        raise InvalidArguments('"metric" must name a handler function called with '
                               '{"example", "prediction"} and returning a number or a boolean')
    fn = callable_named(name, "metric")[0]

    def metric(example, prediction, trace=None):
        value = fn({"example": jsonable(example.toDict()),
                    "prediction": jsonable(dict(prediction.items()))})
        if not isinstance(value, (bool, int, float)):
            raise ValueError(f"metric {name!r} returned {jsonable(value)!r}, not a number")
        return value

    return metric


def _copy_entry(found, new_id, module):
    from ..programs import ProgramEntry

    copy = ProgramEntry(found.session_id, new_id, found.program_type, module, found.signature,
                        found.signature_string, found.input_names, found.output_types,
                        definition=found.definition)
    return copy
