"""Argument checks that raise built-in exceptions in one message form.

"The 'n_hidden' parameter of BernoulliRBM must be an int in the range [1, inf). Got 0 instead."

Units, the stack, averaging, the runtime policy and recipes (owner "the recipe", the
parameter named by its key, ``pretrain.learning_rate``) all speak it. Wrong types raise
TypeError, wrong values ValueError; a recipe turns both into ValueError.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import TypeVar

_T = TypeVar("_T")


class LayerwiseError(Exception):
    """The family of errors a user causes and can fix: a bad recipe or argument, bad
    data, a refused resume, a run that diverged. The command line prints them as one
    line (exit status 2); any other exception is a bug, shown with its traceback."""


class InvalidInput(LayerwiseError, ValueError):
    """A value that is wrong: a recipe key out of range, NaN in data, a corrupt file."""


class InvalidType(LayerwiseError, TypeError):
    """A value of the wrong type, such as a string where a number belongs."""


class Refused(LayerwiseError, RuntimeError):
    """A request the state on disk or of the workers refuses: a run folder in use, a
    resume with other data or another group size, a worker group that failed."""


class MissingExtra(LayerwiseError, ImportError):
    """An optional dependency that a feature needs is not installed; the message names
    the extra to install."""


def _interval(low, high, low_open=False, high_open=False) -> str:
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    left = "(" if (low is None or low_open) else "["
    right = ")" if (high is None or high_open) else "]"
    return f"{left}{lo}, {hi}{right}"


def describe(owner: str, name: str) -> str:
    return f"The '{name}' parameter of {owner}"


def fail(owner: str, name: str, expected: str, value, error=ValueError, show_type: bool = False):
    """Raise ``error`` with the message "The 'name' parameter of owner must be expected.
    Got value instead." """
    got = f"{value!r} ({type(value).__name__})" if show_type else repr(value)
    error = {ValueError: InvalidInput, TypeError: InvalidType}.get(error, error)
    raise error(f"{describe(owner, name)} must be {expected}. Got {got} instead.")


def check_bool(owner: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        fail(owner, name, "true or false", value, TypeError, show_type=True)
    return value


def check_str(owner: str, name: str, value) -> str:
    if not isinstance(value, str):
        fail(owner, name, "a str", value, TypeError, show_type=True)
    return value


def check_choice(owner: str, name: str, value: _T, choices) -> _T:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        fail(owner, name, "one of " + ", ".join(map(repr, choices)), value)
    return value


def check_int(owner: str, name: str, value, *, low=None, high=None) -> int:
    """Raise TypeError/ValueError unless ``value`` is an int in [low, high]."""
    expected = f"an int in the range {_interval(low, high)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(owner, name, expected, value, TypeError, show_type=True)
    if (low is not None and value < low) or (high is not None and value > high):
        fail(owner, name, expected, value)
    return int(value)


def check_range(owner: str, name: str, value, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """Raise TypeError/ValueError unless ``value`` is a finite real number in the interval."""
    expected = f"a float in the range {_interval(low, high, low_open, high_open)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(owner, name, expected, value, TypeError, show_type=True)
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or v < low or (low_open and v == low)
    if high is not None:
        bad = bad or v > high or (high_open and v == high)
    if bad:
        fail(owner, name, expected, value)
    return v


def check_device(spec, owner: str = "the runtime policy", name: str = "device") -> str:
    """A device spec as a recipe or ``--device`` gives it: auto, cpu, cuda or cuda:N."""
    if not isinstance(spec, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec):
        fail(owner, name, "one of 'auto', 'cpu', 'cuda' or 'cuda:N'", spec)
    return spec


def parse_size(text) -> int:
    """Bytes from "600M", "2G", "1.5GB", "512k" or a plain number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if m is None:
        raise InvalidInput(f"cannot read the size {text!r}; write it as bytes or with a unit, such as 600M or 2G")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    value = int(float(m.group(1)) * scale)
    if value < 1:
        raise InvalidInput(f"the size {text!r} is below one byte")
    return value
