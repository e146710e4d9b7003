"""Boxes of the image with the text they should show (`Region`), and their soft masks at latent resolution
(`box_mask`): the geometry that region prompts (`sampling.regions`) and layout scores (`scoring.layout_score`) share.

Example:
    >>> Region((0.0, 0.0, 0.5, 1.0), "a red circle")  # the left half
    Region(box=(0.0, 0.0, 0.5, 1.0), prompt='a red circle')
    >>> box_mask((0.25, 0.0, 0.75, 1.0), 4, 4)[0]
    tensor([0., 1., 1., 0.])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Region", "box_mask"]


@dataclass(frozen=True, repr=False)
class Region:
    """A box of the image with its local prompt.

    Attributes:
        box (tuple[float, float, float, float]): (x0, y0, x1, y1) as fractions of the image width and height, x to
            the right and y down, with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1.
        prompt (str): what the box should show, non-empty.
        strength (float, defaults to 1.0): the weight of the region's prediction inside its box, in [0, 1]; 0 turns
            the region off.
    """

    box: tuple[float, float, float, float]
    prompt: str
    strength: float = 1.0

    def __post_init__(self):
        try:
            box = tuple(float(v) for v in self.box)
        except (TypeError, ValueError):
            raise ValueError(f"`box` is {self.box!r}; pass four numbers (x0, y0, x1, y1) in [0, 1].") from None
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"`box` is {self.box!r}; pass four finite numbers (x0, y0, x1, y1) in [0, 1].")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ValueError(
                f"`box` is {self.box!r}; pass fractions of the image with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1."
            )
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"`prompt` is {self.prompt!r}; pass the non-empty text of what the box should show.")
        if (
            isinstance(self.strength, bool)
            or not isinstance(self.strength, (int, float))
            or not 0 <= self.strength <= 1
        ):
            raise ValueError(f"`strength` is {self.strength!r}; pass a number in [0, 1] (1: full weight, 0: off).")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "strength", float(self.strength))

    def __repr__(self) -> str:
        strength = "" if self.strength == 1.0 else f", strength={self.strength}"
        return f"Region(box={self.box!r}, prompt={self.prompt!r}{strength})"


def _ramp(lo: float, hi: float, size: int, feather: float) -> torch.Tensor:
    """(size,) soft indicator of [lo, hi] (fractions) over the centres of `size` pixels. An edge at 0 or 1 is the
    image's border and is not feathered."""
    centre = torch.arange(size, dtype=torch.float64) + 0.5
    start = lo * size if lo > 0 else -math.inf
    end = hi * size if hi < 1 else math.inf
    inside = torch.minimum(centre - start, end - centre)  # signed distance to the nearer edge, latent pixels
    if feather == 0:
        return (inside > 0).double() + 0.5 * (inside == 0).double()  # the ramp's limit: 1/2 on the edge itself
    return (inside / feather + 0.5).clamp(0, 1)


def box_mask(box: Sequence[float], height: int, width: int, feather: float = 1.0) -> torch.Tensor:
    """The soft mask of a box at latent resolution.

    Each axis is a linear ramp of width `feather` latent pixels centred on the box's edge, evaluated at pixel centres
    (1 from `feather / 2` inside the edge, 0 from `feather / 2` outside); the mask is the product of the two axes.
    With `feather=1` a pixel's value along an axis is the fraction of it the box covers (an anti-aliased box); with
    `feather=0` it is 1 inside, 0 outside and 1/2 on a pixel centre the edge crosses. Edges on the image's border
    (0 or 1) are not feathered.

    Args:
        box (`Sequence[float]`): (x0, y0, x1, y1), fractions of the image width and height (x right, y down).
        height (`int`), width (`int`): the latent's size h, w.
        feather (`float`, defaults to 1.0): ramp width in latent pixels, >= 0.

    Returns:
        `torch.Tensor` (h, w), float32, values in [0, 1].

    Example:
        >>> box_mask((0.25, 0.0, 0.75, 1.0), 4, 4)[0]
        tensor([0., 1., 1., 0.])
    """
    if isinstance(feather, bool) or not isinstance(feather, (int, float)) or not math.isfinite(feather) or feather < 0:
        raise ValueError(f"`feather` is {feather!r}; pass a finite width >= 0 in latent pixels (e.g. 1.0).")
    x0, y0, x1, y1 = Region(tuple(box), "box").box  # the same checks as a Region's
    return (_ramp(y0, y1, height, feather)[:, None] * _ramp(x0, x1, width, feather)[None, :]).float()
