"""Hard negatives: captions one edit away from a true caption, each false for the scene.

Kinds (`KINDS`) and the categories they apply to:

    swap_attributes  two_objects, spatial   the two colors exchanged: "a blue circle and a red square"
    swap_relation    spatial                the opposite relation: "a red circle to the right of a blue square"
    wrong_count      counting               another number, nearest first: "two green triangles"
    wrong_color      all                    one phrase's color replaced (or, in a referring phrase, added)
    wrong_shape      all                    one phrase's shape replaced
    wrong_size       referring              the phrase's size replaced or added: "the small red circle"

Replacement colors and shapes present in the scene are tried first (the hardest negatives: right words, wrong
binding), then the others, each group in random order. A candidate is kept only if it is false for the scene even
with relaxed geometry (`semantics.evaluate` with margin `-SAFETY_MARGIN`), so that no small error in the oracle's
object centres can make it true, and if `allowed(candidate)` (the dataset uses it to keep held-out combinations
out of training text). Each kind gives at most one negative; a kind with no such candidate gives none.

Example:
    >>> from discadapt.worlds.shapes import Obj, Scene, hard_negatives, parse
    >>> scene = Scene(64, [Obj("red", "circle", "small", (4, 24, 20, 40), 64),
    ...                    Obj("blue", "square", "large", (36, 20, 60, 44), 64)])
    >>> for n in hard_negatives(scene, parse("a red circle to the left of a blue square")):
    ...     print(f"{n.kind:16} {n.caption.text}")
    swap_attributes  a blue circle to the left of a red square
    swap_relation    a red circle to the right of a blue square
    wrong_color      a blue circle to the left of a blue square
    wrong_shape      a red square to the left of a blue square
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from .captions import Caption, Phrase
from .palette import COLORS, SHAPES, SIZES
from .scenes import Scene
from .semantics import SAFETY_MARGIN, evaluate

__all__ = ["KINDS", "Negative", "hard_negatives"]

KINDS = ("swap_attributes", "swap_relation", "wrong_count", "wrong_color", "wrong_shape", "wrong_size")
_KINDS_OF = {
    "single": ("wrong_color", "wrong_shape"),
    "two_objects": ("swap_attributes", "wrong_color", "wrong_shape"),
    "counting": ("wrong_count", "wrong_color", "wrong_shape"),
    "spatial": ("swap_attributes", "swap_relation", "wrong_color", "wrong_shape"),
    "referring": ("wrong_color", "wrong_shape", "wrong_size"),
}
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclasses.dataclass(frozen=True)
class Negative:
    """A hard negative: its `kind` (one of `KINDS`) and its `caption`."""

    kind: str
    caption: Caption


def _ordered(rng: np.random.Generator, present: set, choices, current) -> list:
    """`choices` other than `current`: those in `present` first, each group shuffled."""
    first = [c for c in choices if c != current and c in present]
    rest = [c for c in choices if c != current and c not in present]
    return [first[i] for i in rng.permutation(len(first))] + [rest[i] for i in rng.permutation(len(rest))]


def _with_phrases(caption: Caption, phrases: list[Phrase]) -> Caption | None:
    try:
        return dataclasses.replace(caption, phrases=tuple(phrases))
    except ValueError:  # both phrases now name the same kind
        return None


def _with_phrase(caption: Caption, index: int, **changes) -> Caption | None:
    phrases = list(caption.phrases)
    phrases[index] = dataclasses.replace(phrases[index], **changes)
    return _with_phrases(caption, phrases)


def _candidates(kind: str, caption: Caption, scene: Scene, rng: np.random.Generator) -> Iterator[Caption | None]:
    phrases = caption.phrases
    if kind == "swap_attributes":
        a, b = phrases
        if a.color != b.color:
            yield _with_phrases(caption, [dataclasses.replace(a, color=b.color), dataclasses.replace(b, color=a.color)])
    elif kind == "swap_relation":
        yield dataclasses.replace(caption, relation=_OPPOSITE[caption.relation])
    elif kind == "wrong_count":
        for n in sorted({1, 2, 3, 4} - {caption.count}, key=lambda n: (abs(n - caption.count), rng.random())):
            yield dataclasses.replace(caption, count=n)
    elif kind == "wrong_color":
        present = {o.color for o in scene.objects}
        for i in rng.permutation(len(phrases)):
            for color in _ordered(rng, present, COLORS, phrases[i].color):
                yield _with_phrase(caption, int(i), color=color)
    elif kind == "wrong_shape":
        present = {o.shape for o in scene.objects}
        for i in rng.permutation(len(phrases)):
            for shape in _ordered(rng, present, SHAPES, phrases[i].shape):
                yield _with_phrase(caption, int(i), shape=shape)
    else:  # wrong_size
        for size in _ordered(rng, set(), SIZES, phrases[0].size):
            yield _with_phrase(caption, 0, size=size)


def hard_negatives(
    scene: Scene,
    caption: Caption,
    rng: np.random.Generator | int = 0,
    allowed: Callable[[Caption], bool] | None = None,
) -> list[Negative]:
    """Hard negatives of `caption`, each false for `scene` (see the module docstring).

    Args:
        scene (Scene): the scene `caption` describes.
        caption (Caption): a caption of the scene.
        rng (np.random.Generator | int): source (or seed) of the order of replacements. Default 0.
        allowed (Callable[[Caption], bool] | None): extra filter on candidates; None keeps all. Default None.

    Returns:
        list[Negative]: at most one per kind that applies to the caption's category, in `KINDS` order.
    """
    rng = np.random.default_rng(rng)
    negatives = []
    for kind in _KINDS_OF[caption.category]:
        for candidate in _candidates(kind, caption, scene, rng):
            if candidate is None or candidate == caption or (allowed is not None and not allowed(candidate)):
                continue
            if not evaluate(scene.objects, candidate, margin=-SAFETY_MARGIN).ok:
                negatives.append(Negative(kind, candidate))
                break
    return negatives
