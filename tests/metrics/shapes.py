"""Hand-made label maps for metric tests."""

from __future__ import annotations

import numpy as np


def rect(shape, r0, r1, c0, c1, value=1, out=None) -> np.ndarray:
    """Fill rows r0..r1-1, cols c0..c1-1 with ``value`` (in ``out``, or a new int64 map)."""
    out = np.zeros(shape, dtype=np.int64) if out is None else out
    out[r0:r1, c0:c1] = value
    return out
