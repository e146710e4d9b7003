"""Checks shared by every generation path (`generate_to_folder`, `bench.pipeline_method`, hence `discadapt generate`
and `discadapt demo`): sampler settings before any work, and images before they are kept.

- `check_steps(steps)`: an int >= 1 (diffusers accepts 0 or -1 and fails later, or divides by zero).
- `check_guidance(guidance)`: a finite number >= 0. NaN, infinity and negative scales are refused: diffusers turns
  classifier-free guidance off for any scale <= 1 (NaN included, silently), and an infinite one gives non-finite
  latents, hence black images. A scale in [0, 1] is allowed: guidance off, as diffusers does.
- `finite_images(images, prompts)`: the images as uint8 when every value is finite, else `NonFiniteImageError`
  naming the prompts whose images hold NaN or infinity (before the clamp to [0, 1] and the cast that would turn
  them into black pixels), so no image computed from non-finite values is saved as a result.

Example:
    >>> check_steps(25), check_guidance(7.5)
    (25, 7.5)
    >>> finite_images(np.zeros((1, 2, 2, 3)), ["a red circle"]).dtype
    dtype('uint8')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["NonFiniteImageError", "check_guidance", "check_steps", "finite_images", "non_finite", "to_uint8"]


class NonFiniteImageError(RuntimeError):
    """Images computed from NaN or infinite values; `prompts` lists the prompts concerned (none was saved)."""

    def __init__(self, prompts: Sequence[str], where: str = ""):
        self.prompts = list(dict.fromkeys(prompts))
        shown = ", ".join(repr(p) for p in self.prompts[:3]) + (", ..." if len(self.prompts) > 3 else "")
        super().__init__(
            f"{where}the images of {len(self.prompts)} prompt(s) hold NaN or infinite values ({shown}) and were not "
            "saved; lower the guidance or correction scale, or sample in float32 (float16 overflows)."
        )


def check_steps(steps, name: str = "steps") -> int:
    """`steps` as an int, or a ValueError naming `name` unless it is an int >= 1."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"`{name}` is {steps!r}; pass an int >= 1 (sampler steps, e.g. 25).")
    return int(steps)


def check_guidance(guidance, name: str = "guidance") -> float:
    """`guidance` as a float, or a ValueError naming `name` unless it is a finite number >= 0."""
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, (int, float, np.integer, np.floating))
        or not math.isfinite(guidance)
        or guidance < 0
    ):
        raise ValueError(
            f"`{name}` is {guidance!r}; pass a finite number >= 0 (classifier-free guidance scale, e.g. 7.5; "
            "values <= 1 turn guidance off)."
        )
    return float(guidance)


def non_finite(images: np.ndarray) -> np.ndarray:
    """`(N,)` bool: which of the `(N, ...)` float images hold a NaN or infinite value."""
    images = np.asarray(images)
    return ~np.isfinite(images.reshape(len(images), -1)).all(axis=1)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] as uint8 pixels, rounded as diffusers' `numpy_to_pil` rounds them (non-finite values,
    which `non_finite` reports, become 0 without a cast warning)."""
    images = np.nan_to_num(np.asarray(images), nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def finite_images(images: np.ndarray, prompts: Sequence[str], where: str = "") -> np.ndarray:
    """`(N, H, W, 3)` float images in [0, 1] as uint8, or `NonFiniteImageError` naming the prompts (image n is of
    `prompts[n]`) whose images hold a NaN or infinite value."""
    bad = non_finite(images)
    if bad.any():
        raise NonFiniteImageError([p for p, b in zip(prompts, bad) if b], where)
    return to_uint8(images)
