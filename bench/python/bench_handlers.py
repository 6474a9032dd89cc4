"""Handlers for the memory benchmark: a command that keeps its worker busy, so that requests
submitted meanwhile stay queued ("in flight") while memory is measured."""

import time


def sleep(args):
    """Sleeps `args["s"]` seconds and says so."""
    time.sleep(args["s"])
    return {"slept": args["s"]}
