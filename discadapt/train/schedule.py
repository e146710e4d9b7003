"""The one learning-rate schedule of every trainer: linear warmup from 0, then constant, linear or cosine decay.

With w warmup steps, T steps in all and s the 0-based optimizer step,

    factor(s) = (s + 1) / w                              for s < w
              = 1                                        "constant"
              = 1 - p                                    "linear"      p = min((s - w) / max(T - w, 1), 1)
              = (1 + cos(pi * p)) / 2                    "cosine"

and the learning rate of a parameter group is its base rate times `factor(s)`. A group may start its schedule at a
later step (the world pipeline's UNet phase starts after its VAE phase): `s` is then counted from that step.

Example:
    >>> [round(lr_factor(s, warmup=2, total=10, kind="cosine"), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math

__all__ = ["LR_SCHEDULES", "lr_factor"]

LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, warmup: int, total: int, kind: str = "constant") -> float:
    """Multiplier of the base learning rate at optimizer step `step` (see the module docstring).

    Args:
        step (int): 0-based optimizer step, counted from the start of the group's schedule.
        warmup (int): steps of linear warmup from 0, >= 0.
        total (int): steps of the schedule (warmup included); the decay reaches its end there.
        kind (str): one of `LR_SCHEDULES`. Default "constant".

    Returns:
        float: the factor, in [0, 1].
    """
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(total - warmup, 1)
    if kind == "linear":
        return 1.0 - min((step - warmup) / span, 1.0)
    if kind == "cosine":  # pi * (s - w) / span, in the order the bundled world CLIP was trained with
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
    raise ValueError(f"`kind` is {kind!r}; pick one of {', '.join(LR_SCHEDULES)}.")
