"""Measuring and improving a program on examples: ``evaluate`` and ``optimize``. The metric
is a function of the pool's handler module, called with ``{"example", "prediction"}`` and
returning a number or a boolean."""

import time

from ..programs import STORE
from .lm import CONFIGURED
from .loader import dspy_command
from .modules import callable_named
from .values import entry, jsonable

_OPTIMIZERS = ("BootstrapFewShot", "LabeledFewShot")


@dspy_command
def evaluate(dspy, args):
    """``{"program_id", "devset": [example], "metric"}`` -> ``{"score", "count"}``: the
    metric's average over the examples, as a percentage (DSPy's ``Evaluate``). An example
    is an object with the signature's input fields and the expected outputs."""
    found = entry(args)
    devset = _examples(dspy, args, "devset", found)
    metric = _metric(args.get("metric"))
    with dspy.context(lm=_lm(found)):
        result = dspy.Evaluate(devset=devset, metric=metric, num_threads=1,
                               display_progress=False)(found.module)
    return {"score": float(result.score), "count": len(devset)}


@dspy_command
def optimize(dspy, args):
    """``{"program_id", "optimizer": "BootstrapFewShot" | "LabeledFewShot", "trainset",
    "metric", "max_bootstrapped_demos"?, "max_labeled_demos"?, "optimized_program_id"?}``:
    compiles a copy of the program and stores it as a new program (default id
    ``<program_id>_optimized``). Result: ``{"program_id", "demos", "elapsed", "definition",
    "state"}``, the last two as ``save_program`` gives them (the pool loads them into its
    other workers)."""
    found = entry(args)
    trainset = _examples(dspy, args, "trainset", found)
    name = args.get("optimizer", "BootstrapFewShot")
    if name not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(_OPTIMIZERS)}, got {jsonable(name)!r}")
    options = {k: args[k] for k in ("max_bootstrapped_demos", "max_labeled_demos") if k in args}
    if name == "LabeledFewShot":
        optimizer = dspy.LabeledFewShot(k=options.get("max_labeled_demos", 16))
    else:
        optimizer = dspy.BootstrapFewShot(metric=_metric(args.get("metric")), **options)
    started = time.perf_counter()
    with dspy.context(lm=_lm(found)):
        compiled = optimizer.compile(found.module.deepcopy(), trainset=trainset)
    new_id = args.get("optimized_program_id") or f"{found.program_id}_optimized"
    if not isinstance(new_id, str) or not new_id:
        raise ValueError("optimized_program_id must be a non-empty string")
    optimized = _copy_entry(found, new_id, compiled)
    STORE.put(optimized)
    demos = sum(len(getattr(p, "demos", [])) for p in compiled.predictors())
    return {"program_id": new_id, "demos": demos, "elapsed": time.perf_counter() - started,
            "definition": found.definition, "state": jsonable(compiled.dump_state())}


def _lm(found):
    lm = CONFIGURED.sessions.get(found.session_id) or CONFIGURED.pool_lm
    if lm is None:
        from . import LMNotConfigured

        raise LMNotConfigured("no language model is configured in this worker: call configure_lm first")
    return lm


def _examples(dspy, args, key, found):
    items = args.get(key)
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise ValueError(f'"{key}" must be a non-empty list of objects with the input fields '
                         f'({", ".join(found.input_names)}) and the expected outputs')
    return [dspy.Example(**item).with_inputs(*found.input_names) for item in items]


def _metric(name):
    if not isinstance(name, str):
        raise ValueError('"metric" must name a handler function called with '
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
