"""Pixel colors for the oracle: which palette color, if any, covers each pixel of an RGB image.

A pixel p is explained as the background plus palette colors, each with a weight (its coverage of the pixel):

1. One color: p = bg + alpha (c - bg). For every palette color c, alpha is the least-squares weight and the
   residual the distance from p to that line; the color of smallest residual (alpha in [0, `MAX_ALPHA`]) is the
   pixel's hue. Darkened, brightened and blurred-into-the-background versions of a color stay on its line.
2. Two colors: p = bg + a (c1 - bg) + b (c2 - bg), a, b >= 0, a + b <= `MAX_PAIR_WEIGHT`. Where blur mixes two
   touching objects, the mixture can lie near a third color's line (red and blue mix to purple) or near none.
   This model is tried only for pairs whose two colors both have pure pixels (one-color fit, alpha >= 0.75)
   within 2 pixels, i.e. where two objects meet, and it replaces the one-color model only where its residual is
   lower by more than `PAIR_GAIN`. Its color is the one of larger weight. Without the neighbourhood condition a
   half-covered purple pixel would read as red plus blue.

The pixel takes the color of the chosen model when that model's residual is below `MAX_RESIDUAL` and the color's
weight is at least `MIN_ALPHA` = 0.5, otherwise it is background. The 0.5 coverage threshold puts the boundary of
a blurred shape where the sharp one had it, so boxes stay (nearly) exact under blur.

`color_coverage` also returns, for every pixel and palette color, the color's weight clipped to [0, 1]: on a
background pixel, the one-color weight of each color (0 where the pixel lies off that color's line); on a pixel of
one color, that color's weight and 0 for the others; where the two-color model was chosen, the two colors'
weights in it. This is the soft coverage of an anti-aliased or blurred edge, which the
oracle's shape measure reads (`oracle.py`).

Example:
    >>> from discadapt.worlds.shapes import COLORS, random_scene, render
    >>> from discadapt.worlds.shapes.pixels import color_labels
    >>> scene = random_scene(seed=0)
    >>> labels = color_labels(render(scene))  # (64, 64) ints, -1 for background
    >>> x0, y0, x1, y1 = scene.objects[0].box
    >>> scene.objects[0].color, list(COLORS)[labels[(y0 + y1) // 2, (x0 + x1) // 2]]
    ('purple', 'purple')
"""

from __future__ import annotations

import numpy as np
import PIL.Image
from scipy import ndimage

from .palette import BACKGROUND, COLORS, MIN_IMAGE_SIZE

__all__ = [
    "MAX_ALPHA",
    "MAX_PAIR_WEIGHT",
    "MAX_RESIDUAL",
    "MIN_ALPHA",
    "PAIR_GAIN",
    "as_image",
    "color_coverage",
    "color_labels",
]

MIN_ALPHA = 0.5  # coverage from which a pixel belongs to a color
MAX_ALPHA = 1.6  # brightest accepted version of a color
MAX_RESIDUAL = 60.0  # grey levels (RGB distance) a pixel may lie from its model
MAX_PAIR_WEIGHT = 1.2  # two touching colors mix to a total weight of 1; purple as red + blue would need 1.65
PAIR_GAIN = 15.0  # grey levels by which the two-color model must beat the one-color model
PURE_ALPHA = 0.75  # one-color coverage of the pixels that show a color is present nearby

_BG = np.asarray(BACKGROUND, dtype=np.float64)
_DIRECTIONS = np.asarray(list(COLORS.values()), dtype=np.float64) - _BG  # (K, 3)
_PAIRS = np.array([(i, j) for i in range(len(COLORS)) for j in range(i + 1, len(COLORS))])  # (P, 2)
_PAIR_BASES = np.stack([_DIRECTIONS[[i, j]].T for i, j in _PAIRS])  # (P, 3, 2)
_PAIR_PINV = np.linalg.pinv(_PAIR_BASES).reshape(-1, 3)  # (2P, 3): rows 2p, 2p + 1 give pair p's weights


def as_image(image) -> np.ndarray:
    """`image` as a uint8 `(S, S, 3)` array; a PIL image is converted to RGB. ValueError for anything else."""
    if isinstance(image, PIL.Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        what = f"{image.dtype} array" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(
            f"`image` is a {what}; pass a PIL image or a uint8 (H, W, 3) array (from floats in [0, 1]: "
            "(x * 255).round().astype(np.uint8))."
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1] or image.shape[0] < MIN_IMAGE_SIZE:
        raise ValueError(
            f"`image` has shape {image.shape}; pass a square RGB image (S, S, 3) with S >= {MIN_IMAGE_SIZE}."
        )
    return image


def color_labels(image) -> np.ndarray:
    """Int `(S, S)` map of palette indices (`list(COLORS)` order), -1 for background (see the module docstring).

    Args:
        image (np.ndarray | PIL.Image.Image): uint8 `(S, S, 3)` RGB array or PIL image, S >= 32.
    """
    return color_coverage(image)[0]


def color_coverage(image) -> tuple[np.ndarray, np.ndarray]:
    """`color_labels(image)` and the soft coverage of each color (see the module docstring).

    Args:
        image (np.ndarray | PIL.Image.Image): uint8 `(S, S, 3)` RGB array or PIL image, S >= 32.

    Returns:
        tuple[np.ndarray, np.ndarray]: int labels `(S, S)` (-1 for background) and float coverage `(S, S, K)` in
        [0, 1], K = `len(COLORS)`.
    """
    d = as_image(image).astype(np.float64) - _BG  # (S, S, 3)

    # 1. one color: p = bg + alpha (c - bg)
    alpha = d @ _DIRECTIONS.T / (_DIRECTIONS**2).sum(1)  # (S, S, K)
    residual = np.linalg.norm(d[..., None, :] - alpha[..., None] * _DIRECTIONS, axis=-1)  # (S, S, K)
    coverage = np.where(residual < MAX_RESIDUAL, np.clip(alpha, 0, 1), 0.0)  # (S, S, K)
    residual[(alpha < 0) | (alpha > MAX_ALPHA)] = np.inf
    hue = residual.argmin(-1)  # (S, S)
    alpha, residual = (np.take_along_axis(a, hue[..., None], -1)[..., 0] for a in (alpha, residual))  # (S, S)

    # 2. two colors, for pairs present within 2 pixels, where one color fits badly
    pure = np.eye(len(COLORS), dtype=bool)[hue] & ((alpha >= PURE_ALPHA) & (residual < MAX_RESIDUAL))[..., None]
    near = ndimage.maximum_filter(pure, size=(5, 5, 1))  # (S, S, K)
    allowed = near[..., _PAIRS[:, 0]] & near[..., _PAIRS[:, 1]]  # (S, S, P)
    where = np.nonzero((residual > PAIR_GAIN) & allowed.any(-1))
    p = d[where]  # (N, 3)
    weights = (p @ _PAIR_PINV.T).reshape(len(p), len(_PAIRS), 2)  # (N, P, 2)
    pair_residual = np.linalg.norm(p[:, None, :] - np.einsum("npk,pck->npc", weights, _PAIR_BASES), axis=-1)  # (N, P)
    pair_residual[(weights < 0).any(-1) | (weights.sum(-1) > MAX_PAIR_WEIGHT) | ~allowed[where]] = np.inf
    pair = pair_residual.argmin(-1)  # (N,)
    n = np.arange(len(p))
    weights, pair_residual = weights[n, pair], pair_residual[n, pair]  # (N, 2), (N,)
    better = pair_residual + PAIR_GAIN < residual[where]
    hue[where] = np.where(better, _PAIRS[pair, weights.argmax(-1)], hue[where])
    alpha[where] = np.where(better, weights.max(-1), alpha[where])
    residual[where] = np.where(better, pair_residual, residual[where])
    labels = np.where((residual < MAX_RESIDUAL) & (alpha >= MIN_ALPHA), hue, -1)

    # coverage: a pixel of one color covers no other; a two-color pixel covers its two colors at their weights
    one = labels >= 0
    coverage[one] *= np.eye(len(COLORS))[labels[one]]
    mixed = tuple(w[better] for w in where)
    coverage[mixed] = 0.0
    for j in range(2):
        coverage[(*mixed, _PAIRS[pair[better], j])] = np.clip(weights[better, j], 0, 1)
    return labels, coverage
