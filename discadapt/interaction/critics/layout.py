"""Prompt-to-layout planning from generic English relation words: which phrase goes on which side of the image.

Pairwise relations ("A RELATION B"), the first one in the prompt, with optional "is"/"are" before it:

    left of    "left of", "to/on/at the left (side) of"        A on the left half,   B on the right half
    right of   "right of", "to/on/at the right (side) of"      A on the right half,  B on the left half
    above      "above", "over", "on (the) top of"               A on the top half,    B on the bottom half
    below      "below", "under", "underneath", "beneath",       A on the bottom half, B on the top half
               "on (the) bottom of"

Positions of one phrase at the end of the prompt ("A on the left", "A at the top (of the image)"): A on that half.
Other prompts ("next to", "behind", no relation) have no layout. Image coordinates: x to the right, y down, boxes
(x0, y0, x1, y1) as fractions of the image.

Example:
    >>> plan_layout("a red circle to the left of a blue square")
    [Region(box=(0.0, 0.0, 0.5, 1.0), prompt='a red circle'), Region(box=(0.5, 0.0, 1.0, 1.0), prompt='a blue square')]
    >>> plan_layout("a cat")
    []
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...sampling.regions import Region

__all__ = ["HALVES", "RELATIONS", "Relation", "parse_relation", "plan_layout", "relation_holds"]

HALVES = {
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0),
}
# relation -> (half of the first phrase, half of the second)
RELATIONS = {
    "left of": ("left", "right"),
    "right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}

_PAIRWISE = re.compile(
    r"\s(?:(?:is|are)\s+)?(?:"
    r"(?P<left>(?:(?:to|on|at)\s+the\s+)?left\s+(?:(?:hand\s+)?side\s+)?of)|"
    r"(?P<right>(?:(?:to|on|at)\s+the\s+)?right\s+(?:(?:hand\s+)?side\s+)?of)|"
    r"(?P<above>(?:on|at)\s+(?:the\s+)?top\s+of|above|over)|"
    r"(?P<below>(?:on|at)\s+(?:the\s+)?bottom\s+of|underneath|beneath|below|under)"
    r")\s",
    re.IGNORECASE,
)
_POSITION = re.compile(
    r"\s(?:(?:is|are)\s+)?(?:on|to|at|in)\s+the\s+(?P<side>left|right|top|bottom)(?:\s+(?:hand\s+)?side)?"
    r"(?:\s+of\s+the\s+(?:image|picture|photo|scene|frame))?$",
    re.IGNORECASE,
)
_FRAME = re.compile(r"the\s+(?:image|picture|photo|scene|frame)", re.IGNORECASE)
_GROUPS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


@dataclass(frozen=True)
class Relation:
    """A prompt's spatial relation.

    Attributes:
        first (str): the phrase before the relation words, e.g. "a red circle".
        relation (str): a key of `RELATIONS` ("left of", "right of", "above", "below") for a pair, or a key of
            `HALVES` ("left", "right", "top", "bottom") for one phrase's position.
        second (str | None): the phrase after the relation words; None for a position.
    """

    first: str
    relation: str
    second: str | None = None


def parse_relation(prompt: str) -> Relation | None:
    """The first spatial relation of `prompt` (see the module docstring), or None.

    Example:
        >>> parse_relation("A cat is on top of a red box.")
        Relation(first='A cat', relation='above', second='a red box')
    """
    if not isinstance(prompt, str):
        raise ValueError(f"`prompt` is {prompt!r}; pass a string.")
    text = " ".join(prompt.split()).strip(" .,;:!")
    match = _PAIRWISE.search(text)
    if match:
        first, second = text[: match.start()].strip(" ,"), text[match.end() :].strip(" ,")
        if first and second and not _FRAME.fullmatch(second):  # "at the bottom of the image" is a position
            return Relation(first, _GROUPS[match.lastgroup], second)
    match = _POSITION.search(text)
    if match and text[: match.start()].strip(" ,"):
        return Relation(text[: match.start()].strip(" ,"), match.group("side").lower())
    return None


def plan_layout(prompt: str) -> list[Region]:
    """Regions placing the phrases of `prompt`'s spatial relation on the halves of the image it names; [] without
    one (see the module docstring).

    Args:
        prompt (str): e.g. "a red circle to the left of a blue square".

    Returns:
        list[Region]: two regions for a pairwise relation (first phrase first), one for a position, else none.
    """
    relation = parse_relation(prompt)
    if relation is None:
        return []
    if relation.second is None:
        return [Region(HALVES[relation.relation], relation.first)]
    first, second = RELATIONS[relation.relation]
    return [Region(HALVES[first], relation.first), Region(HALVES[second], relation.second)]


def _centre(box) -> tuple[float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 + x1) / 2, (y0 + y1) / 2


def relation_holds(relation: str, first_box, second_box=None) -> bool:
    """Whether boxes (x0, y0, x1, y1), as fractions of the image, satisfy `relation`, by their centres.

    Args:
        relation (str): a key of `RELATIONS` (then `second_box` is needed) or of `HALVES`.
        first_box: the first phrase's box.
        second_box: the second phrase's box, for a pairwise relation.

    Example:
        >>> relation_holds("left of", (0.0, 0.2, 0.3, 0.5), (0.6, 0.1, 0.9, 0.4))
        True
        >>> relation_holds("bottom", (0.2, 0.1, 0.4, 0.3))
        False
    """
    x, y = _centre(first_box)
    if relation in HALVES:
        return {"left": x < 0.5, "right": x > 0.5, "top": y < 0.5, "bottom": y > 0.5}[relation]
    if relation not in RELATIONS:
        raise ValueError(f"`relation` is {relation!r}; pick one of {sorted(RELATIONS) + sorted(HALVES)}.")
    if second_box is None:
        raise ValueError(f"`second_box` is None; relation {relation!r} compares two boxes.")
    x2, y2 = _centre(second_box)
    return {"left of": x < x2, "right of": x > x2, "above": y < y2, "below": y > y2}[relation]
