"""Anti-aliased rendering of a `Scene`: soft edges like a VAE decoder's, for testing the oracle.

`render.py` fills the pixels whose centre lies inside a shape, so edges are hard and boxes exact. Images that come
out of a decoder have soft edges: a boundary pixel shows a mixture of the shape's color and the background. This
renderer gives each pixel its *coverage*, the fraction of its area inside the shape, estimated on a
`supersample` x `supersample` grid of sub-pixel samples, and mixes `bg + coverage * (color - bg)`.

With a seed, each object is also moved by a random sub-pixel offset (up to `shift` pixels on each axis) and its
side scaled by a random factor in `[1 - scale, 1 + scale]`, about its box centre. The defaults (half a pixel,
6%) keep every caption's truth: relations hold with a margin of 3.2 pixels at 32 pixels, and sides stay nearer
their own size than the other one (8 +- 0.5 and 12 +- 0.7 pixels at 32, threshold 10). Objects of a scene in
which two boxes touch share one offset and only shrink, so that no shape paints over its neighbour.

The continuous shapes, in a box of side s with its top-left corner at the origin: the square fills the box; the
circle is the disk of radius s/2 at the box centre; the triangle (apex up) has its apex at (s/2, 0) and its base
on y = s. The hard renderer's masks are these shapes sampled at pixel centres.

Example:
    >>> from discadapt.worlds.shapes import check, make_dataset
    >>> from discadapt.worlds.shapes.render_soft import render_soft
    >>> example = make_dataset(1, seed=0, image_size=32)[0]
    >>> image = render_soft(example.scene, seed=0)  # uint8 (32, 32, 3), soft edges, jittered
    >>> check(image, example.caption).ok
    True
"""

from __future__ import annotations

import numpy as np

from .palette import COLORS
from .render import background
from .scenes import Obj, Scene

__all__ = ["coverage", "render_soft"]


def coverage(shape: str, x0: float, y0: float, side: float, image_size: int, supersample: int = 16) -> np.ndarray:
    """Float `(S, S)` fraction of each pixel's area inside `shape`, whose box has its top-left corner at
    `(x0, y0)` (pixels, sub-pixel allowed) and side `side`; S = `image_size`.

    Args:
        shape (str): "circle", "square" or "triangle".
        x0, y0 (float): top-left corner of the shape's box in pixels.
        side (float): side of the box in pixels.
        image_size (int): side S of the image.
        supersample (int): samples per pixel along each axis. Default 16.
    """
    n = image_size * supersample
    c = (np.arange(n) + 0.5) / supersample  # sample positions in pixels
    x, y = c[None, :] - x0, c[:, None] - y0  # (1, n), (n, 1): coordinates in the box
    if shape == "square":
        inside = (x >= 0) & (x <= side) & (y >= 0) & (y <= side)
    elif shape == "circle":
        inside = (x - side / 2) ** 2 + (y - side / 2) ** 2 <= (side / 2) ** 2
    elif shape == "triangle":
        inside = (y >= 0) & (y <= side) & (np.abs(x - side / 2) <= y / 2)
    else:
        raise ValueError(f"`shape` is {shape!r}; pick one of circle, square, triangle.")
    return inside.reshape(image_size, supersample, image_size, supersample).mean((1, 3))


def _touching(objects: tuple[Obj, ...]) -> bool:
    """Whether two boxes share an edge or a corner (gap 0 along the axis that separates them)."""
    for i, a in enumerate(objects):
        for b in objects[:i]:
            gap = max(b.box[0] - a.box[2], a.box[0] - b.box[2], b.box[1] - a.box[3], a.box[1] - b.box[3])
            if gap <= 0:
                return True
    return False


def render_soft(
    scene: Scene,
    seed: int | np.random.Generator | None = None,
    shift: float = 0.5,
    scale: float = 0.06,
    supersample: int = 16,
) -> np.ndarray:
    """The anti-aliased image of `scene`: uint8 `(S, S, 3)` (see the module docstring).

    Args:
        scene (Scene): the scene.
        seed (int | np.random.Generator | None): seed of the sub-pixel offsets and scales; None draws every object
            exactly in its box (soft edges only). Default None.
        shift (float): largest offset in pixels along each axis. Default 0.5.
        scale (float): largest relative change of an object's side. Default 0.06.
        supersample (int): samples per pixel along each axis. Default 16.
    """
    rng = None if seed is None else np.random.default_rng(seed)
    image = background(scene)  # (S, S, 3) float
    size = scene.image_size
    common = rng.uniform(-shift, shift, size=2) if rng is not None and _touching(scene.objects) else None
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        side, dx, dy = float(x1 - x0), 0.0, 0.0
        if rng is not None:
            dx, dy = rng.uniform(-shift, shift, size=2) if common is None else common
            grown = side * rng.uniform(1 - scale, 1 + (scale if common is None else 0.0))
            dx, dy, side = dx - (grown - side) / 2, dy - (grown - side) / 2, grown  # scaled about the box centre
        cov = coverage(obj.shape, x0 + dx, y0 + dy, side, size, supersample)[..., None]  # (S, S, 1)
        image = image * (1 - cov) + np.asarray(COLORS[obj.color], dtype=np.float64) * cov
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
