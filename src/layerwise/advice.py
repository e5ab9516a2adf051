"""The guide's rules of thumb as code.

Layer sizes (the guide, and Hinton & Salakhutdinov 2006): every hidden layer smaller than
the input (else the net can learn the identity function), none below a quarter of the
input, 3-4 layers counting the output, and the output as wide as the number of labels:
784 -> 500 -> 250 -> 10.
"""

from __future__ import annotations

import math

from layerwise._checks import check_int


def suggest_layers(n_inputs: int) -> list[int]:
    """Hidden sizes for ``n_inputs`` inputs: two layers, the first about 64% of the input
    (rounded to a multiple of 50 for inputs of 200 or more), the second half of the first,
    both at least a quarter of the input and below the input. 784 -> [500, 250]."""
    check_int("suggest_layers", "n_inputs", n_inputs, low=2)
    floor = math.ceil(n_inputs / 4)
    step = 50 if n_inputs >= 200 else 1
    first = max(floor, min(n_inputs - 1, int(round(n_inputs * 0.64 / step)) * step))
    second = max(floor, first // 2)
    return [first, second]
