"""What a caption means in a scene: `evaluate(objects, caption)` decides whether it is true.

The same function judges a scene's ground-truth objects and the objects the oracle detects in an image
(both are `Obj`), so the referee and the data generator cannot disagree about meaning.

Rules, per category (an object matches a phrase when it has the phrase's shape and, where the phrase names them,
its color and size; centres are box centres, normalised, y downwards):

- single: at least one object matches.
- two_objects: each phrase is matched by at least one object.
- counting: exactly `count` objects match.
- spatial: some object matching the first phrase is in the relation to some object matching the second.
  Object a is in relation r to object b when, with (dx, dy) = centre(a) - centre(b),
      along - across > margin,
  where along is the offset in the relation's direction (-dx for "left of", dx for "right of", -dy for "above",
  dy for "below") and across the absolute offset on the other axis. With margin 0 this is: the relation's axis
  dominates and points the right way, so exactly one of the four relations holds for a pair (none on a tie).
- referring: the phrase must pick out exactly one object, the referent. Without a position: exactly one object
  matches. With a position: at least two objects match and the extreme one in that direction (smallest cx for
  "left", largest cy for "bottom", ...) leads the next one by more than margin.

`margin` (default 0) is how the data generator builds robust labels: positives hold with margin
`SAFETY_MARGIN`, hard negatives fail even with margin `-SAFETY_MARGIN`, so that the oracle's small errors in
object centres cannot flip either.

Example:
    >>> from discadapt.worlds.shapes import Obj, evaluate, parse
    >>> red = Obj("red", "circle", "small", (4, 24, 20, 40), 64)
    >>> blue = Obj("blue", "square", "large", (36, 20, 60, 44), 64)
    >>> evaluate([red, blue], parse("a red circle to the left of a blue square")).ok
    True
    >>> evaluate([red, blue], parse("a red circle above a blue square")).reason
    'found 1 red circle and 1 blue square; no pair is above with margin 0.0'
    >>> evaluate([red, blue], parse("the large square")).target == blue
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .captions import NUMBERS, Caption, Phrase
from .scenes import Obj

__all__ = ["SAFETY_MARGIN", "Verdict", "evaluate", "in_relation", "matching"]

SAFETY_MARGIN = 0.1  # in image widths (6.4 pixels at 64, 3.2 at 32)

_AXIS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}  # (axis, sign)
_POSITION_AXIS = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}


@dataclass(frozen=True)
class Verdict:
    """Whether a caption is true of a scene or image.

    Attributes:
        ok (bool): the caption is true.
        category (str): the caption's category.
        reason (str): what was found, in words.
        target (Obj | None): the referent of a true referring caption, else None.
        marginal (bool): set by `oracle.check` on images: the verdict would change if one reading near its
            cut-off went the other way (`oracle.py`). Always False from `evaluate` on scenes.
    """

    ok: bool
    category: str
    reason: str
    target: Obj | None = None
    marginal: bool = False


def matching(objects: Sequence[Obj], phrase: Phrase) -> list[Obj]:
    """The objects that `phrase` describes."""
    return [
        o
        for o in objects
        if o.shape == phrase.shape and phrase.color in (None, o.color) and phrase.size in (None, o.size)
    ]


def in_relation(a: Obj, b: Obj, relation: str, margin: float = 0.0) -> bool:
    """Whether `a` is `relation` ("left of", "right of", "above", "below") `b`: along - across > `margin`."""
    axis, sign = _AXIS[relation]
    offset = (a.center[0] - b.center[0], a.center[1] - b.center[1])
    return sign * offset[axis] - abs(offset[1 - axis]) > margin


def _plural(phrase: Phrase, n: int) -> str:
    return f"{n} {phrase.words(plural=n != 1)}"


def evaluate(objects: Sequence[Obj], caption: Caption, margin: float = 0.0) -> Verdict:
    """Whether `caption` is true of `objects` (a scene's objects or the oracle's detections).

    Args:
        objects (Sequence[Obj]): the objects of one scene or image.
        caption (Caption): a parsed caption (`captions.parse`).
        margin (float): required lead, in image widths, of spatial relations and referring positions; negative
            values relax them. Default 0.

    Returns:
        Verdict: `ok`, the category, a reason, and the referent for referring captions.
    """
    cat, phrases = caption.category, caption.phrases
    found = [matching(objects, p) for p in phrases]
    if cat == "single":
        return Verdict(bool(found[0]), cat, f"found {_plural(phrases[0], len(found[0]))}")
    if cat == "two_objects":
        ok = bool(found[0]) and bool(found[1])
        return Verdict(ok, cat, f"found {_plural(phrases[0], len(found[0]))} and {_plural(phrases[1], len(found[1]))}")
    if cat == "counting":
        n = len(found[0])
        wanted = NUMBERS[caption.count - 1]
        return Verdict(n == caption.count, cat, f"found {_plural(phrases[0], n)}, the caption says {wanted}")
    if cat == "spatial":
        pairs = [(a, b) for a in found[0] for b in found[1] if a is not b]
        ok = any(in_relation(a, b, caption.relation, margin) for a, b in pairs)
        what = f"{_plural(phrases[0], len(found[0]))} and {_plural(phrases[1], len(found[1]))}"
        return Verdict(ok, cat, f"found {what}; {'a' if ok else 'no'} pair is {caption.relation} with margin {margin}")
    return _refer(found[0], caption, margin)


def _refer(candidates: list[Obj], caption: Caption, margin: float) -> Verdict:
    phrase, cat = caption.phrases[0], caption.category
    if caption.position is None:
        if len(candidates) == 1:
            return Verdict(True, cat, f"exactly one {phrase.words()}", candidates[0])
        return Verdict(False, cat, f"found {_plural(phrase, len(candidates))}, not exactly one")
    if len(candidates) < 2:
        return Verdict(False, cat, f"found {_plural(phrase, len(candidates))}; a position needs two or more")
    axis, sign = _POSITION_AXIS[caption.position]
    ranked = sorted(candidates, key=lambda o: -sign * o.center[axis])  # the extreme first
    lead = sign * (ranked[0].center[axis] - ranked[1].center[axis])
    if lead > margin:
        return Verdict(True, cat, f"the {caption.position}most of {len(candidates)} leads by {lead:.3f}", ranked[0])
    return Verdict(False, cat, f"the {caption.position}most of {len(candidates)} leads by only {lead:.3f}")
