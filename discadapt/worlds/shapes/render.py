"""Rendering a `Scene` to an RGB image with numpy, without anti-aliasing, so that boxes are exact.

A pixel belongs to a shape when its centre is inside the shape, with one rule per shape, in the coordinates of
the object's square box of side s (x, y from the box's top-left corner, pixel centres at k + 0.5):

- square: every pixel of the box;
- circle: (x - s/2)^2 + (y - s/2)^2 <= (s/2)^2;
- triangle (isosceles, apex up, base and height s): |x - s/2| <= (s/2) (row + 1) / s, the triangle's half-width
  at the bottom edge of the pixel's row, so that no row is empty.

Each shape touches all four edges of its box, for every side.

Example:
    >>> from discadapt.worlds.shapes import random_scene, render, shape_mask
    >>> image = render(random_scene(seed=0))
    >>> image.shape, image.dtype
    ((64, 64, 3), dtype('uint8'))
    >>> for row in shape_mask("triangle", 8)[::2]:  # every other row
    ...     print("".join("#" if v else "-" for v in row))
    ---##---
    --####--
    -######-
    ########
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from .palette import BACKGROUND, COLORS, SHAPES, check_choice
from .scenes import Scene

__all__ = ["TEXTURE_AMPLITUDE", "background", "render", "shape_mask"]

TEXTURE_AMPLITUDE = 6.0  # grey levels, largest deviation of the textured background from BACKGROUND


@lru_cache(maxsize=512)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean `(side, side)` mask of `shape` filling a square box of `side` pixels (read-only, cached)."""
    check_choice("shape", shape, SHAPES)
    y = np.arange(side)[:, None] + 0.5  # (side, 1) pixel centres
    x = np.arange(side)[None, :] + 0.5  # (1, side)
    half = side / 2
    if shape == "square":
        mask = np.ones((side, side), dtype=bool)
    elif shape == "circle":
        mask = (x - half) ** 2 + (y - half) ** 2 <= half**2
    else:
        mask = np.abs(x - half) <= half * (y + 0.5) / side  # y + 0.5: the bottom edge of the pixel's row
    mask.flags.writeable = False
    return mask


def background(scene: Scene) -> np.ndarray:
    """The background of `scene` as float `(S, S, 3)`: uniform, or with its seeded smooth luminance texture."""
    size = scene.image_size
    image = np.broadcast_to(np.asarray(BACKGROUND, dtype=np.float64), (size, size, 3)).copy()
    if scene.background == "textured":
        noise = np.random.default_rng(scene.texture_seed).standard_normal((size, size))
        texture = ndimage.gaussian_filter(noise, sigma=size / 16, mode="wrap")  # (S, S)
        image += TEXTURE_AMPLITUDE * texture[..., None] / np.abs(texture).max()
    return image


def render(scene: Scene) -> np.ndarray:
    """The image of `scene`: uint8 `(S, S, 3)` with S = `scene.image_size`."""
    image = background(scene)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        region = image[y0:y1, x0:x1]  # (side, side, 3), a view
        region[shape_mask(obj.shape, x1 - x0)] = COLORS[obj.color]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
