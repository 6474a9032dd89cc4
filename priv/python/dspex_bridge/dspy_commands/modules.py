"""The DSPy module a ``program_type`` names, built from the request: ReAct's tools and
BestOfN's and Refine's reward are functions of the pool's handler module (``:handlers``),
called with JSON-able arguments as any command is."""

import re

from ..errors import InvalidArguments
from .. import commands, elixir
from ..state import STATE
from .values import jsonable

PROGRAM_TYPES = {
    "predict": "Predict",
    "chainofthought": "ChainOfThought",
    "cot": "ChainOfThought",
    "react": "ReAct",
    "bestofn": "BestOfN",
    "refine": "Refine",
}
_INNER = ("Predict", "ChainOfThought")


def program_type(value, default="Predict"):
    """The canonical name of a program type as callers spell it (``"chain_of_thought"``...)."""
    if value is None:
        return default
    if isinstance(value, str):
        key = re.sub(r"[\s_\-.]", "", value).lower()
        if key.startswith("dspy"):
            key = key[4:]
        if key in PROGRAM_TYPES:
            return PROGRAM_TYPES[key]
    raise InvalidArguments(
        f"unsupported program_type {value!r}: use one of Predict, ChainOfThought (or "
        f"chain_of_thought, cot), ReAct, BestOfN, Refine"
    )


def build(dspy, kind, sig, args):
    """The module for program type ``kind`` over signature ``sig``."""
    if kind in _INNER:
        return getattr(dspy, kind)(sig)
    if kind == "ReAct":
        max_iters = _integer(args, "max_iters", 10, 1, 100)
        return dspy.ReAct(sig, tools=[_tool(dspy, spec) for spec in _tools(args)],
                          max_iters=max_iters)
    inner = program_type(args.get("module"))
    if inner not in _INNER:
        raise InvalidArguments(f"{kind}'s module must be Predict or ChainOfThought, got {inner}")
    n = _integer(args, "n", 3, 1, 100)
    threshold = args.get("threshold", 1.0)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise InvalidArguments(f"threshold must be a number, got {jsonable(threshold)!r}")
    reward = _reward(args.get("reward"))
    return getattr(dspy, kind)(getattr(dspy, inner)(sig), N=n, reward_fn=reward,
                               threshold=float(threshold))


def _integer(args, key, default, low, high):
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArguments(
            f"{key} must be an integer from {low} to {high}, got {jsonable(value)!r}")
    return value


def _tools(args):
    tools = args.get("tools")
    if not isinstance(tools, list) or not tools:
        raise InvalidArguments(
            'ReAct needs "tools": a non-empty list of handler function names, or of '
            '{"name", "description"?, "args"?: {arg: {"type", "desc"?}}} objects'
        )
    return tools


def callable_named(name, what):
    """A function of the handler module, else an Elixir tool of the pool (see
    ``dspex_bridge.elixir``), as ``fn(args: dict)``; with its description and argument
    schema."""
    try:
        fn = commands.handler(name)
        return fn, (fn.__doc__ or "").strip(), {}
    except LookupError as missing:
        spec = elixir.registered().get(name) if isinstance(name, str) else None
        if spec is None:
            tools = ", ".join(sorted(elixir.registered())) or "none"
            raise InvalidArguments(
                f"{what}: {missing}; nor an Elixir tool (registered: {tools})") from None

        def run(args):
            return elixir.call(name, args)

        return run, spec.get("description") or "", spec.get("args") or {}


def _tool(dspy, spec):
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidArguments(f"a tool is a handler function name or an object with a name, got "
                               f"{jsonable(spec)!r}")
    name = spec["name"]
    fn, known_desc, known_args = callable_named(name, f"tool {name!r}")
    desc = spec.get("description", spec.get("desc")) or known_desc or name
    given = spec.get("args") or known_args
    if not isinstance(given, dict):
        raise InvalidArguments(f"tool {name!r}: args must be an object of argument name to "
                               f'{{"type", "desc"?}}, got {jsonable(given)!r}')
    schema = {}
    for arg, info in given.items():
        info = info if isinstance(info, dict) else {}
        schema[str(arg)] = {"type": info.get("type", "string"),
                            "description": info.get("desc", info.get("description", ""))}

    if STATE.concurrency > 1 and not commands.has_handler(name):
        # Run as a task (execute_program's async variant): other requests go on meanwhile.
        async def call(**kwargs):
            return await elixir.acall(name, kwargs)
    else:
        def call(**kwargs):
            return fn(kwargs)

    return dspy.Tool(call, name=name, desc=str(desc), args=schema)



def _reward(name):
    if not isinstance(name, str):
        raise InvalidArguments('BestOfN and Refine need "reward": the name of a handler function '
                               'called with {"inputs", "outputs"} and returning a number')
    fn = callable_named(name, "reward")[0]

    def reward(inputs, prediction):
        value = fn({"inputs": jsonable(dict(inputs)), "outputs": jsonable(dict(prediction.items()))})
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"reward function {name!r} returned {jsonable(value)!r}, not a number")
        return float(value)

    return reward
