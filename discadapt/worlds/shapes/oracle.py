"""The oracle: the objects of an image, found from its pixels alone, and captions checked against them.

`detect(image)`:

1. Pixel colors: each pixel gets a palette color or background (`pixels.color_labels`: a mixture model of the
   background and one color, or two where blurred objects touch).
2. Objects: the pixels of each color are grouped into 8-connected components (`scipy.ndimage.label`); holes are
   filled, pixels joined to a component by a corner only are dropped, and so are components that vanish under a
   3 x 3 erosion (lines at most 2 pixels thick, such as specks of noise or the band where blurred red meets blurred
   blue). The box of what remains is the object's box: exact on rendered images, within a pixel under blur.
3. Shape, from the mask in its box:
   - triangle when the mask is not symmetric top to bottom: intersection over union of the mask and its vertical
     flip below `MIN_SYMMETRY` (0.73). Measured on 13,760 objects at 32 and 64 pixels, clean, blurred (sigma 1),
     noisy (sigma 20) and both, touching or not: triangles 0.35-0.70, circles and squares 0.77-1.
   - otherwise square when it fills the corners of its box: the mean fill of the three fullest c x c corner
     patches (c = a fifth of the side, at least 2; the emptiest corner is ignored, as a touching neighbour may
     have bitten it) above `CORNER_FILL` (0.5). Measured as above: circles 0-0.42, squares 0.67-1.
4. Size: "large" when the longer side of the box is at least the midpoint of the small and large sides
   (`palette.size_of_side`).

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

import numpy as np
from scipy import ndimage

from .captions import Caption, parse
from .palette import COLORS, size_of_side
from .pixels import as_image, color_labels
from .scenes import Obj
from .semantics import Verdict, evaluate

__all__ = ["CORNER_FILL", "MIN_SYMMETRY", "check", "check_all", "detect"]

MIN_SYMMETRY = 0.73
CORNER_FILL = 0.5

_EIGHT = np.ones((3, 3), dtype=bool)


def _prune(mask: np.ndarray) -> np.ndarray:
    """`mask` without its pixels that have no 4-neighbour in it: stray pixels joined by a corner only."""
    p = np.pad(mask, 1)
    return mask & (p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:])


def _shape(mask: np.ndarray) -> str:
    """Step 3: triangle if the mask is not symmetric top to bottom, else square if it fills its box's corners."""
    symmetry = (mask & mask[::-1]).sum() / (mask | mask[::-1]).sum()
    if symmetry < MIN_SYMMETRY:
        return "triangle"
    c = max(2, round(min(mask.shape) / 5))
    corners = sorted(float(mask[r, k].mean()) for r in (np.s_[:c], np.s_[-c:]) for k in (np.s_[:c], np.s_[-c:]))
    return "square" if np.mean(corners[1:]) > CORNER_FILL else "circle"


def detect(image) -> list[Obj]:
    """The objects in `image` (see the module docstring).

    Args:
        image (np.ndarray | PIL.Image.Image): uint8 `(S, S, 3)` RGB array or PIL image, S >= 32.

    Returns:
        list[Obj]: the detected objects (color, shape, size, pixel box), ordered by palette color, then by the
        top-left corner of their box (row first).
    """
    image = as_image(image)
    size = image.shape[0]
    labels = color_labels(image)  # (S, S)
    found = []
    for k, color in enumerate(COLORS):
        components, _ = ndimage.label(labels == k, structure=_EIGHT)
        for i, (ys, xs) in enumerate(ndimage.find_objects(components), start=1):
            mask = _prune(ndimage.binary_fill_holes(components[ys, xs] == i))  # (h, w)
            if not ndimage.binary_erosion(mask, structure=_EIGHT).any():
                continue
            rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # pruning may have shrunk the box
            box = (xs.start + cols[0], ys.start + rows[0], xs.start + cols[-1] + 1, ys.start + rows[-1] + 1)
            found.append(Obj(color, _shape(mask), size_of_side(max(mask.shape), size), box, size))
    return found


def check(image, caption: str | Caption) -> Verdict:
    """Whether `caption` is true of `image`, judged on `detect(image)`.

    Args:
        image (np.ndarray | PIL.Image.Image): uint8 `(S, S, 3)` RGB array or PIL image, S >= 32.
        caption (str | Caption): a caption of the grammar (`captions.py`); text is parsed.

    Returns:
        Verdict: `ok`, category, reason, and for a referring caption the referent found (its box is the answer).

    Raises:
        ValueError: for an image of the wrong type or shape, or a caption outside the grammar (naming it).
    """
    caption = caption if isinstance(caption, Caption) else parse(caption)
    return evaluate(detect(image), caption)


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
    return [evaluate(detect(image), caption) for image, caption in zip(images, parsed)]
