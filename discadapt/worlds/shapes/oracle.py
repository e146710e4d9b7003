"""The oracle: the objects of an image, found from its pixels alone, and captions checked against them.

`detect(image)`:

1. Pixel colors: each pixel gets a palette color or background (`pixels.color_coverage`: a mixture model of the
   background and one color, or two where blurred objects touch).
2. Objects: the pixels of each color are grouped into 8-connected components (`scipy.ndimage.label`); holes are
   filled, pixels joined to a component by a corner only are dropped, and so are components that vanish under a
   3 x 3 erosion (lines at most 2 pixels thick, such as specks of noise or the band where blurred red meets blurred
   blue). The box of what remains is the object's box: exact on rendered images, within a pixel under blur.
3. Shape, from the object's soft coverage c: 1 inside the mask (pixels whose 8 neighbours are all in it), the
   color's weight (`pixels.color_coverage`, 0 on pixels of other colors) on the mask's edge and on the ring of
   pixels around it. With (x, y) pixel centres and moments taken under c:
   - triangle when the rows are skewed, E[(y - my)^3] / E[(y - my)^2]^1.5 below `MAX_SKEW` (-0.2): an apex-up
     triangle has skew -0.57, symmetric shapes 0;
   - otherwise square when the squareness E[dx^2 dy^2] / (E[dx^2] E[dy^2]) is above `MIN_SQUARENESS` (0.88), with
     dx = x - mx, dy = y - my: 1 for a square, also blurred by any separable kernel (box pixels, Gaussian blur),
     as its x and y stay independent; 2/3 for a disk, rising towards 1 only as blur swamps it.
   Measured with `benchmarks/oracle_shapes.py` on 11,841 objects at 32 and 64 pixels, drawn hard (`render.py`)
   and anti-aliased at random sub-pixel offsets and scales (`render_soft.py`), clean, blurred (sigma 0.7, 1),
   noisy (sigma 5, 10, 20), touching or not: skew of triangles -0.74 to -0.25, of circles and squares -0.14 to
   0.13; squareness of circles 0.63-0.93 (99% below 0.81), of squares 0.92-1.08 (99% above 0.95). Two objects
   were misread (small circles touching a neighbour, soft and blurred with sigma 1, at 32 pixels), against 199 by
   the earlier rule, corner fill of the thresholded mask, which read up to 18% of small anti-aliased circles as
   squares: at 8 pixels a half-covered pixel turns the corner of a 2 x 2 patch on or off.
4. Size: "large" when the longer side of the box is at least the midpoint of the small and large sides
   (`palette.size_of_side`).

A verdict is *marginal* when it would change if one reading near its cut-off went the other way: a shape score
within `SHAPE_BAND` of its cut-off, a box side one pixel from the size threshold, or an object centre moved by a
pixel (relations and referring positions, judged again with margins of +-1 pixel). `check` reports it as
`Verdict.marginal`, so the share of marginal verdicts bounds how much of a difference the judge itself could make.

`check(image, caption)` judges the parsed caption on the detections with `semantics.evaluate` (margin 0), the
same rules that define the ground truth of scenes.

Example:
    >>> from discadapt.worlds.shapes import check, detect, random_scene, render
    >>> scene = random_scene(seed=0)
    >>> image = render(scene)
    >>> set(detect(image)) == set(scene.objects)  # colors, shapes, sizes and exact boxes
    True
    >>> check(image, "a blue circle to the left of a purple square").ok
    True
    >>> check(image, "two yellow squares").reason
    'found 1 yellow square, the caption says two'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from .captions import Caption, parse
from .palette import COLORS, side_pixels, size_of_side
from .pixels import as_image, color_coverage
from .scenes import Obj
from .semantics import Verdict, evaluate

__all__ = ["MAX_SKEW", "MIN_SQUARENESS", "SHAPE_BAND", "check", "check_all", "detect", "shape_scores"]

MAX_SKEW = -0.2
MIN_SQUARENESS = 0.88
SHAPE_BAND = 0.05  # a shape score this close to its cut-off is marginal

_EIGHT = np.ones((3, 3), dtype=bool)
_PAD = 2  # pixels around a box: the coverage ring, and room for the erosion at the window's edge


@dataclass(frozen=True)
class _Reading:
    """One detected object, the readings it would have if a marginal cut-off went the other way, its mask in its
    box and its shape scores `(skew, squareness)`."""

    obj: Obj
    alternatives: tuple[Obj, ...]
    mask: np.ndarray
    scores: tuple[float, float]


def _prune(mask: np.ndarray) -> np.ndarray:
    """`mask` without its pixels that have no 4-neighbour in it: stray pixels joined by a corner only."""
    p = np.pad(mask, 1)
    return mask & (p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:])


def shape_scores(coverage: np.ndarray) -> tuple[float, float]:
    """Skew of the rows and squareness of a coverage map (step 3 of the module docstring).

    Args:
        coverage (np.ndarray): float `(h, w)` coverage of one object, 0 outside it.

    Returns:
        tuple[float, float]: `(skew, squareness)`; a triangle has skew below `MAX_SKEW`, a square squareness
        above `MIN_SQUARENESS`.

    Example:
        >>> from discadapt.worlds.shapes import SHAPES, shape_mask
        >>> [tuple(round(v, 2) for v in shape_scores(np.pad(shape_mask(s, 16), 2) * 1.0)) for s in SHAPES]
        [(0.0, 0.68), (0.0, 1.0), (-0.56, 0.79)]
    """
    w = coverage / coverage.sum()
    y, x = np.indices(coverage.shape) + 0.5  # pixel centres
    dx, dy = x - (w * x).sum(), y - (w * y).sum()
    vx, vy = (w * dx**2).sum(), (w * dy**2).sum()
    skew = (w * dy**3).sum() / vy**1.5
    squareness = (w * dx**2 * dy**2).sum() / (vx * vy)
    return float(skew), float(squareness)


def _shape(skew: float, squareness: float) -> tuple[str, str | None]:
    """Step 3: the shape, and the other shape when the deciding score lies within `SHAPE_BAND` of its cut-off."""
    symmetric = "square" if squareness > MIN_SQUARENESS else "circle"
    if skew < MAX_SKEW:
        return "triangle", symmetric if skew > MAX_SKEW - SHAPE_BAND else None
    if skew < MAX_SKEW + SHAPE_BAND:
        return symmetric, "triangle"
    if abs(squareness - MIN_SQUARENESS) < SHAPE_BAND:
        return symmetric, "circle" if symmetric == "square" else "square"
    return symmetric, None


def _read(image) -> list[_Reading]:
    """Steps 1-4 of the module docstring, with each object's marginal alternatives."""
    image = as_image(image)
    size = image.shape[0]
    labels, weights = color_coverage(image)  # (S, S), (S, S, K)
    padded_weights = np.pad(weights, ((_PAD, _PAD), (_PAD, _PAD), (0, 0)))
    threshold = (side_pixels("small", size) + side_pixels("large", size)) / 2
    found = []
    for k, color in enumerate(COLORS):
        components, _ = ndimage.label(labels == k, structure=_EIGHT)
        for i, (ys, xs) in enumerate(ndimage.find_objects(components), start=1):
            mask = _prune(ndimage.binary_fill_holes(components[ys, xs] == i))  # (h, w)
            if not ndimage.binary_erosion(mask, structure=_EIGHT).any():
                continue
            rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # pruning may have shrunk the box
            x0, y0 = xs.start + cols[0], ys.start + rows[0]
            box = (x0, y0, x0 + mask.shape[1], y0 + mask.shape[0])

            # soft coverage in the box padded by _PAD (padded arrays: the window starts at (y0, x0))
            window = np.s_[y0 : box[3] + 2 * _PAD, x0 : box[2] + 2 * _PAD]
            inside = np.pad(mask, _PAD)  # (h + 2 PAD, w + 2 PAD)
            ring = ndimage.binary_dilation(inside, structure=_EIGHT)
            core = ndimage.binary_erosion(inside, structure=_EIGHT)
            coverage = np.where(core, 1.0, padded_weights[window][..., k]) * ring
            scores = shape_scores(coverage)
            shape, other_shape = _shape(*scores)

            side = max(mask.shape)
            obj = Obj(color, shape, size_of_side(side, size), box, size)
            alternatives = [replace(obj, shape=other_shape)] if other_shape else []
            if abs(side - threshold + 0.5) <= 1:  # one of the two sides next to the size threshold
                alternatives.append(replace(obj, size="small" if obj.size == "large" else "large"))
            found.append(_Reading(obj, tuple(alternatives), mask, scores))
    return found


def detect(image) -> list[Obj]:
    """The objects in `image` (see the module docstring).

    Args:
        image (np.ndarray | PIL.Image.Image): uint8 `(S, S, 3)` RGB array or PIL image, S >= 32.

    Returns:
        list[Obj]: the detected objects (color, shape, size, pixel box), ordered by palette color, then by the
        top-left corner of their box (row first).
    """
    return [reading.obj for reading in _read(image)]


def _judge(readings: list[_Reading], caption: Caption, image_size: int) -> Verdict:
    """`evaluate` on the readings, marginal when one alternative reading or a one-pixel shift changes `ok`."""
    objects = [r.obj for r in readings]
    verdict = evaluate(objects, caption)
    flips = [
        evaluate(objects[:i] + [alternative] + objects[i + 1 :], caption).ok
        for i, reading in enumerate(readings)
        for alternative in reading.alternatives
    ]
    if caption.category in ("spatial", "referring"):
        flips += [evaluate(objects, caption, margin=m / image_size).ok for m in (-1.0, 1.0)]
    return replace(verdict, marginal=any(ok != verdict.ok for ok in flips))


def check(image, caption: str | Caption) -> Verdict:
    """Whether `caption` is true of `image`, judged on `detect(image)`.

    Args:
        image (np.ndarray | PIL.Image.Image): uint8 `(S, S, 3)` RGB array or PIL image, S >= 32.
        caption (str | Caption): a caption of the grammar (`captions.py`); text is parsed.

    Returns:
        Verdict: `ok`, category, reason, for a referring caption the referent found (its box is the answer), and
        whether the verdict is marginal (see the module docstring).

    Raises:
        ValueError: for an image of the wrong type or shape, or a caption outside the grammar (naming it).
    """
    caption = caption if isinstance(caption, Caption) else parse(caption)
    image = as_image(image)
    return _judge(_read(image), caption, image.shape[0])


def check_all(images: Sequence, captions: Sequence[str | Caption]) -> list[Verdict]:
    """`check` on pairs: image i with caption i.

    Args:
        images (Sequence): N images as accepted by `check`.
        captions (Sequence[str | Caption]): N captions, N >= 1.

    Returns:
        list[Verdict]: N verdicts; the mean of their `ok` is the alignment rate.
    """
    captions = [captions] if isinstance(captions, (str, Caption)) else list(captions)
    images = list(images)
    if not captions:
        raise ValueError("`captions` is empty; pass one caption per image.")
    if len(images) != len(captions):
        raise ValueError(
            f"`images` has {len(images)} items and `captions` {len(captions)}; pass one caption per image."
        )
    parsed = [c if isinstance(c, Caption) else parse(c) for c in captions]  # a bad caption fails before any work
    return [check(image, caption) for image, caption in zip(images, parsed)]
