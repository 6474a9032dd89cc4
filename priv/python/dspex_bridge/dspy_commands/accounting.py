"""What one ``execute_program`` cost: the tokens each model reported, and whether every LM
call it made was answered from DSPy's cache.

Both are counted per execution (DSPy's usage tracker and callbacks live in
``dspy.context``, a context variable), so concurrent requests in one worker do not mix.
"""

_TOKEN_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
_classes = None


def start(dspy):
    """A fresh ``(tracker, counter)`` for one execution, to pass to ``dspy.context``."""
    tracker_class, counter_class = _classes_for(dspy)
    return tracker_class(), counter_class()


def context_settings(dspy, tracker, counter):
    """The ``dspy.context`` settings that make an execution count into these."""
    return {"usage_tracker": tracker, "callbacks": [*dspy.settings.get("callbacks", []), counter]}


def report(tracker, counter):
    """``{"usage": {model: {prompt_tokens, completion_tokens, total_tokens}}, "cached": bool}``:
    usage only for models that reported tokens; cached when LM calls were made and none
    reached a model."""
    usage = {}
    for model, totals in (tracker.get_total_tokens() or {}).items():
        counts = {key: totals[key] for key in _TOKEN_KEYS if isinstance(totals.get(key), int)}
        if counts:
            usage[str(model)] = counts
    return {"usage": usage, "cached": counter.calls > 0 and tracker.uncached_calls == 0}


def _classes_for(dspy):
    global _classes
    if _classes is None:
        from dspy.utils.callback import BaseCallback
        from dspy.utils.usage_tracker import UsageTracker

        class CountingTracker(UsageTracker):
            """DSPy adds usage only for calls that were not answered from its cache."""

            def __init__(self):
                super().__init__()
                self.uncached_calls = 0

            def add_usage(self, lm, usage_entry):
                self.uncached_calls += 1
                super().add_usage(lm, usage_entry)

        class LMCallCounter(BaseCallback):
            def __init__(self):
                self.calls = 0

            def on_lm_start(self, call_id, instance, inputs):
                self.calls += 1

        _classes = (CountingTracker, LMCallCounter)
    return _classes
