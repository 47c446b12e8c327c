"""Channel arithmetic shared by the space spec and the layer plan: MobileNet's rounding rule."""

from __future__ import annotations


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor`` without losing more than 10 % of it.

    This is the MobileNet channel rounding rule; the OFA checkpoints were built with it, so the
    exact same arithmetic is needed to land on their channel counts.
    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)
