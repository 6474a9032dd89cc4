"""Handlers for the start-up benchmark: importing this module imports DSPy, as a real DSPex
worker does, so "ready" includes the cost of `import dspy`."""

import dspy


def dspy_version(args):
    """The DSPy version this worker imported."""
    return {"version": dspy.__version__}
