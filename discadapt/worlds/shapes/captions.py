"""The caption grammar of the shapes world: `Phrase` and `Caption` records, their text, and the parser.

Grammar (COLOR, SHAPE and SIZE from `palette.py`; SHAPEs is the plural, "circles"):

    single       a COLOR SHAPE                                   "a red circle"
    two_objects  a COLOR SHAPE and a COLOR SHAPE                 "a red circle and a blue square"
    counting     NUMBER COLOR SHAPE(s)                           "three green triangles", "one red circle"
    spatial      a COLOR SHAPE RELATION a COLOR SHAPE            "a red circle to the left of a blue square"
    referring    the [SIZE] [COLOR] SHAPE [POSITION]             "the circle on the left", "the large red circle"

    NUMBER    one | two | three | four
    RELATION  to the left of | to the right of | above | below
    POSITION  on the left | on the right | at the top | at the bottom

The article is "an" before a vowel. The two objects of `two_objects` and `spatial` are different
(color, shape) pairs. What each caption means in a scene is defined in `semantics.py`.

Example:
    >>> caption = Caption("spatial", (Phrase("circle", "red"), Phrase("square", "blue")), relation="left of")
    >>> caption.text
    'a red circle to the left of a blue square'
    >>> parse(caption.text) == caption
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .palette import COLORS, SHAPES, SIZES, check_choice

__all__ = ["CATEGORIES", "NUMBERS", "PHRASE_BOXES", "POSITIONS", "RELATIONS", "Caption", "Phrase", "parse"]

CATEGORIES = ("single", "two_objects", "counting", "spatial", "referring")
NUMBERS = ("one", "two", "three", "four")
RELATIONS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
POSITIONS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
# the boxes a caption's phrases may be given for grounding: their objects', the halves a relation plans, or the
# second phrase's half only (`adapter_data.ShapeWorldItems(phrase_boxes=...)`; here, light, for the plug-in's choices)
PHRASE_BOXES = ("objects", "planned", "planned-second")


@dataclass(frozen=True)
class Phrase:
    """A noun phrase naming objects: a shape, optionally qualified by color and size.

    Args:
        shape (str): one of `palette.SHAPES`.
        color (str | None): a name of `palette.COLORS`, or None. Default None.
        size (str | None): "small", "large", or None. Default None.
    """

    shape: str
    color: str | None = None
    size: str | None = None

    def __post_init__(self):
        check_choice("shape", self.shape, SHAPES)
        if self.color is not None:
            check_choice("color", self.color, COLORS)
        if self.size is not None:
            check_choice("size", self.size, SIZES)

    def words(self, plural: bool = False) -> str:
        """The phrase's words, e.g. "large red circle" ("large red circles" when `plural`)."""
        return " ".join(w for w in (self.size, self.color, self.shape + ("s" if plural else "")) if w)

    def indefinite(self) -> str:
        """The phrase with its indefinite article: "a red circle" ("an" before a vowel)."""
        words = self.words()
        return ("an " if words[0] in "aeiou" else "a ") + words


@dataclass(frozen=True)
class Caption:
    """A caption of one of the `CATEGORIES` (see the grammar in the module docstring).

    Args:
        category (str): one of `CATEGORIES`.
        phrases (tuple[Phrase, ...]): two for `two_objects` and `spatial`, else one. Phrases of all categories
            but `referring` name a color and no size.
        count (int | None): 1 to 4 for `counting`, else None.
        relation (str | None): a key of `RELATIONS` ("left of", "right of", "above", "below") for `spatial`, else
            None: the first phrase's object is in that relation to the second's.
        position (str | None): a key of `POSITIONS` ("left", "right", "top", "bottom") or None, `referring` only.
    """

    category: str
    phrases: tuple[Phrase, ...]
    count: int | None = None
    relation: str | None = None
    position: str | None = None

    def __post_init__(self):
        check_choice("category", self.category, CATEGORIES)
        object.__setattr__(self, "phrases", tuple(self.phrases))
        cat, phrases = self.category, self.phrases
        wanted = 2 if cat in ("two_objects", "spatial") else 1
        if len(phrases) != wanted or not all(isinstance(p, Phrase) for p in phrases):
            raise ValueError(f"`phrases` is {phrases!r}; a {cat} caption takes {wanted} Phrase(s).")
        if cat != "referring" and any(p.color is None or p.size is not None for p in phrases):
            raise ValueError(f"`phrases` is {phrases!r}; {cat} phrases name a color and no size.")
        if wanted == 2 and phrases[0] == phrases[1]:
            raise ValueError(f"`phrases` names {phrases[0].words()} twice; a {cat} caption names two different kinds.")
        if (self.count is not None) != (cat == "counting") or (cat == "counting" and self.count not in (1, 2, 3, 4)):
            raise ValueError(f"`count` is {self.count!r}; pass 1 to 4 for a counting caption, None otherwise.")
        if (self.relation is not None) != (cat == "spatial"):
            raise ValueError(f"`relation` is {self.relation!r}; pass one for a spatial caption, None otherwise.")
        if self.relation is not None:
            check_choice("relation", self.relation, RELATIONS)
        if self.position is not None:
            if cat != "referring":
                raise ValueError(f"`position` is {self.position!r}; only a referring caption takes a position.")
            check_choice("position", self.position, POSITIONS)

    @property
    def text(self) -> str:
        """The caption as a sentence of the grammar."""
        first = self.phrases[0]
        if self.category == "single":
            return first.indefinite()
        if self.category == "two_objects":
            return f"{first.indefinite()} and {self.phrases[1].indefinite()}"
        if self.category == "counting":
            return f"{NUMBERS[self.count - 1]} {first.words(plural=self.count > 1)}"
        if self.category == "spatial":
            return f"{first.indefinite()} {RELATIONS[self.relation]} {self.phrases[1].indefinite()}"
        return " ".join(["the", first.words()] + ([POSITIONS[self.position]] if self.position else []))


def _alternatives(words) -> str:
    return "|".join(sorted(words, key=len, reverse=True))


_COLOR, _SHAPE, _SIZE = _alternatives(COLORS), _alternatives(SHAPES), _alternatives(SIZES)
_OBJ = rf"an? ({_COLOR}) ({_SHAPE})"
_PATTERNS = {
    "single": re.compile(rf"{_OBJ}"),
    "two_objects": re.compile(rf"{_OBJ} and {_OBJ}"),
    "counting": re.compile(rf"({_alternatives(NUMBERS)}) ({_COLOR}) ({_SHAPE})(s?)"),
    "spatial": re.compile(rf"{_OBJ} ({_alternatives(RELATIONS.values())}) {_OBJ}"),
    "referring": re.compile(
        rf"the (?:({_SIZE}) )?(?:({_COLOR}) )?({_SHAPE})(?: ({_alternatives(POSITIONS.values())}))?"
    ),
}


def parse(text: str) -> Caption:
    """The `Caption` whose text is `text` (case, surrounding spaces, repeated spaces and a final period ignored).

    Raises:
        ValueError: naming `text` when it is not a sentence of the grammar.
    """
    if not isinstance(text, str):
        raise ValueError(f"`text` is {text!r}; pass a caption string such as 'a red circle'.")
    clean = " ".join(text.lower().split()).removesuffix(".").strip()
    for category, pattern in _PATTERNS.items():
        m = pattern.fullmatch(clean)
        if m is None:
            continue
        g = m.groups()
        if category == "single":
            return Caption(category, (Phrase(g[1], g[0]),))
        if category == "two_objects":
            phrases = (Phrase(g[1], g[0]), Phrase(g[3], g[2]))
            if phrases[0] == phrases[1]:
                break
            return Caption(category, phrases)
        if category == "counting":
            count = NUMBERS.index(g[0]) + 1
            if (count > 1) != (g[3] == "s"):
                break  # "two red circle", "one red circles"
            return Caption(category, (Phrase(g[2], g[1]),), count=count)
        if category == "spatial":
            phrases = (Phrase(g[1], g[0]), Phrase(g[4], g[3]))
            if phrases[0] == phrases[1]:
                break
            relation = next(k for k, v in RELATIONS.items() if v == g[2])
            return Caption(category, phrases, relation=relation)
        position = next((k for k, v in POSITIONS.items() if v == g[3]), None)
        return Caption(category, (Phrase(g[2], g[1], g[0]),), position=position)
    raise ValueError(
        f"caption {text!r} is not in the shapes grammar; write e.g. 'a red circle', 'a red circle and a blue "
        "square', 'three green triangles', 'a red circle to the left of a blue square' or 'the large red circle'."
    )
