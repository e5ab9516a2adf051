"""Argument checks that raise built-in exceptions in one message form.

"The 'n_hidden' parameter of BernoulliRBM must be an int in the range [1, inf). Got 0 instead."
"""

from __future__ import annotations

import math
import numbers


def _interval(low, high, low_open=False, high_open=False) -> str:
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    left = "(" if (low is None or low_open) else "["
    right = ")" if (high is None or high_open) else "]"
    return f"{left}{lo}, {hi}{right}"


def check_int(owner: str, name: str, value, *, low=None, high=None) -> int:
    """Raise TypeError/ValueError unless ``value`` is an int in [low, high]."""
    what = f"The '{name}' parameter of {owner} must be an int in the range {_interval(low, high)}."
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} Got {value!r} ({type(value).__name__}) instead.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{what} Got {value!r} instead.")
    return int(value)


def check_range(owner: str, name: str, value, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """Raise TypeError/ValueError unless ``value`` is a finite real number in the interval."""
    what = (
        f"The '{name}' parameter of {owner} must be a float in the range "
        f"{_interval(low, high, low_open, high_open)}."
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} Got {value!r} ({type(value).__name__}) instead.")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or v < low or (low_open and v == low)
    if high is not None:
        bad = bad or v > high or (high_open and v == high)
    if bad:
        raise ValueError(f"{what} Got {value!r} instead.")
    return v
