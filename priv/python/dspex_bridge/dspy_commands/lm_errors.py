"""DSPy's LM exceptions, classified for the pool: each gets a ``kind`` the Elixir side maps
to an error type a caller can match (``:lm_rate_limited``, ``:lm_timeout``...), with DSPy's
own judgement of whether a retry may help and, for rate limits, the provider's wait."""

import sys

# DSPy's class names (dspy.utils.exceptions), most specific first: a subclass takes the kind
# of the first class it is an instance of.
_KINDS = (
    ("ContextWindowExceededError", "lm_context_window_exceeded"),
    ("LMInvalidRequestError", "lm_invalid_request"),
    ("LMUnsupportedFeatureError", "lm_invalid_request"),
    ("LMRateLimitError", "lm_rate_limited"),
    ("LMTimeoutError", "lm_timeout"),
    ("LMAuthError", "lm_auth_failed"),
    ("LMBillingError", "lm_auth_failed"),
    ("LMServerError", "lm_server_error"),
    ("LMTransportError", "lm_unreachable"),
    ("AdapterParseError", "lm_output_unparseable"),
    # No API key, or a provider client set up wrong: the LM is not usable as configured.
    ("LMConfigurationError", "lm_not_configured"),
)


def classify(exc):
    """Sets ``exc.dspex_details`` when ``exc`` is one of DSPy's LM errors; never raises."""
    try:
        exceptions = sys.modules.get("dspy.utils.exceptions")
        if exceptions is None:
            return
        for class_name, kind in _KINDS:
            cls = getattr(exceptions, class_name, None)
            if cls is not None and isinstance(exc, cls):
                details = {"kind": kind}
                judge = getattr(exceptions, "is_retryable_lm_error", None)
                if judge is not None:
                    details["retryable"] = bool(judge(exc))
                retry_after = getattr(exc, "retry_after", None)
                if retry_after is not None:
                    details["retry_after"] = retry_after
                exc.dspex_details = details
                return
    except Exception:
        return
