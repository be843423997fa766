"""Right-padding token rows into one array, at a power-of-two width (or a multiple of a step) so
that a new row length reuses a shape already compiled: the one helper the engine, evaluations and
trainers share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket(n: int, minimum: int = 1, maximum: int | None = None) -> int:
    """The smallest power of two >= n, raised to `minimum`, capped at `maximum`."""
    width = max(minimum, 1 << max(n - 1, 0).bit_length())
    return width if maximum is None else min(width, maximum)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` >= n."""
    return -(-n // multiple) * multiple


def right_pad(rows: Sequence[Sequence[float]], width: int, fill: float = 0,
              dtype=np.int32) -> np.ndarray:
    """[len(rows), width]: each row from the left, `fill` after it; a longer row is refused."""
    out = np.full((len(rows), width), fill, dtype)
    for i, r in enumerate(rows):
        if len(r) > width:
            raise ValueError(f"row {i} has {len(r)} tokens; the padded width is {width}")
        out[i, :len(r)] = r
    return out
