"""Referring expressions: the phrases that pick out one object of a scene, and nothing else.

Forms tried, for a target object: the bare shape ("the circle"), color + shape ("the red circle"), size + shape
("the large circle"), size + color + shape ("the large red circle"), and each of these with a position ("the
circle on the left", "the red square at the top"). A form is kept when it refers to the target with margin
`SAFETY_MARGIN` (`semantics.evaluate`): a phrase without a position must match the target alone; with a position,
the target must be the extreme of two or more matching objects by more than the margin.

Example:
    >>> from discadapt.worlds.shapes import Obj, referring_expressions
    >>> objects = [Obj("red", "circle", "small", (4, 24, 20, 40), 64),
    ...            Obj("blue", "circle", "large", (36, 20, 60, 44), 64)]
    >>> [c.text for c in referring_expressions(objects, 0)]
    ['the red circle', 'the small circle', 'the small red circle', 'the circle on the left']
"""

from __future__ import annotations

from collections.abc import Sequence

from .captions import POSITIONS, Caption, Phrase
from .scenes import Obj
from .semantics import SAFETY_MARGIN, evaluate

__all__ = ["referring_expressions"]


def referring_expressions(objects: Sequence[Obj], index: int, margin: float = SAFETY_MARGIN) -> list[Caption]:
    """Every referring caption of the grammar that picks out `objects[index]` (see the module docstring).

    Args:
        objects (Sequence[Obj]): the scene's objects.
        index (int): position of the target in `objects`.
        margin (float): lead required of a position's extreme object, in image widths. Default `SAFETY_MARGIN`.

    Returns:
        list[Caption]: the referring captions, shortest forms first; empty when none is unambiguous.
    """
    if not 0 <= index < len(objects):
        raise ValueError(f"`index` is {index!r}; pass a position in `objects`, 0 to {len(objects) - 1}.")
    target = objects[index]
    phrases = [
        Phrase(target.shape),
        Phrase(target.shape, target.color),
        Phrase(target.shape, size=target.size),
        Phrase(target.shape, target.color, target.size),
    ]
    found = []
    for position in (None, *POSITIONS):
        for phrase in phrases:
            caption = Caption("referring", (phrase,), position=position)
            if evaluate(objects, caption, margin).target == target:
                found.append(caption)
    return found
