"""Numerical constants shared by the float64 reference and the torch and Triton selective-scan backends.

Plain Python floats, so that importing them imports nothing optional; the Triton backend wraps them in
``tl.constexpr`` because Triton kernels only read globals of that type.
"""

from __future__ import annotations

import math

LOG2_E = 1.0 / math.log(2.0)
"""log2(e): ``exp(x) == exp2(x * LOG2_E)``. The backends evaluate every decay ``exp(dt * A)`` as one exp2."""

LN_2 = math.log(2.0)
"""ln(2) = 1 / LOG2_E: turns a rate scaled by ``LOG2_E`` back into ``A``."""

SOFTPLUS_THRESHOLD = 20.0
"""Softplus is the identity above this input, as in PyTorch's ``F.softplus`` and mamba-ssm."""
