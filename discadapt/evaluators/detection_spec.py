"""What a GenEval- or T2I-CompBench-style prompt asks a detector to find: objects (noun, count, colour) and a relation.

`object_spec(prompt)` reads prompts built from noun phrases `[a|an|the|number] [colour] noun` joined by ",", "and"
or one relation word between the first two phrases:

- GenEval: "a photo of a dog", "a photo of two dogs", "a photo of a red car", "a photo of a red car and a blue
  bench", "a photo of a dog left of a cat" (the leading "a photo of" / "an image of" / "a picture of" is dropped);
- T2I-CompBench: "a green bench and a blue bowl", "a red book on the left of a yellow cup", "three cats",
  "four tents, two boats and one pig".

The rules, and what they leave out:

- Counts: "one".."ten" and digits give an exact count; "a", "an", "the" or no word give `count=None` (at least one,
  as GenEval's single-object and colour prompts).
- Colours: `COLOURS` ("grey" is read as "gray"); one colour word right before the noun, nothing else
  ("light blue", "red and white" are refused); the fruit "orange" is a noun ("a red orange").
- Nouns: one or two words ("teddy bear"); the last word of a counted (> 1) or bare noun is made singular for the
  detector's query (`singular`: a few irregular words, then -ies -> -y, -ches/-shes/-sses/-xes/-zes -> drop "es",
  -s -> drop "s", but not -ss/-us/-is words).
- Relations: "left of", "right of", "above", "below" and their T2I-CompBench forms ("on the left of", "on the top
  of", "on the bottom of", "under", ...) relate object 0 to object 1 ("a dog left of a cat": the dog is left of the
  cat). Undirected words ("next to", "near", "on side of", "beside") split the two objects with `relation=None`:
  only their presence can be checked.
- Anything else is a ValueError naming the prompt and the words it could not read: verbs ("eight cats lounged in
  the sun", about 60 of T2I-CompBench's 300 numeracy_val prompts), captions ("A bathroom with white tile and a
  beige toilet.", about 60 of its 300 color_val prompts), other attributes, "on" alone.

Example:
    >>> object_spec("a photo of a red car and a blue bench")
    PromptSpec(objects=(ObjectSpec(noun='car', count=None, colour='red'), ObjectSpec(noun='bench', count=None, colour='blue')), relation=None)
    >>> object_spec("three cats").objects
    (ObjectSpec(noun='cat', count=3, colour=None),)
    >>> object_spec("a red book on the left of a yellow cup").relation
    'left of'
"""  # noqa: E501

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["COLOURS", "RELATIONS", "ObjectSpec", "PromptSpec", "object_spec", "plural", "singular"]

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {w: i + 1 for i, w in enumerate("one two three four five six seven eight nine ten".split())}
_ARTICLES = ("a", "an", "the")
_PREFIXES = ("a photo of ", "an image of ", "a picture of ", "a photograph of ")
# Phrase -> relation of object 0 to object 1; None: the phrase separates two objects but gives no direction.
_RELATION_WORDS = {
    "on the left side of": "left of",
    "on the left of": "left of",
    "to the left of": "left of",
    "left of": "left of",
    "on the right side of": "right of",
    "on the right of": "right of",
    "to the right of": "right of",
    "right of": "right of",
    "on the top of": "above",
    "on top of": "above",
    "above": "above",
    "on the bottom of": "below",
    "at the bottom of": "below",
    "underneath": "below",
    "beneath": "below",
    "under": "below",
    "below": "below",
    "on side of": None,
    "next to": None,
    "beside": None,
    "near": None,
}
_RELATION_RE = re.compile(r"\s(" + "|".join(sorted(_RELATION_WORDS, key=len, reverse=True)) + r")\s")
_STOP = {"of", "on", "in", "at", "to", "with", "and", "or", "for", "by", "from", "is", "are", "side", "top", "next"}
_IRREGULAR = {
    "men": "man",
    "women": "woman",
    "children": "child",
    "people": "person",
    "mice": "mouse",
    "geese": "goose",
    "feet": "foot",
    "teeth": "tooth",
    "knives": "knife",
    "wolves": "wolf",
    "leaves": "leaf",
    "shelves": "shelf",
    "loaves": "loaf",
    "tomatoes": "tomato",
    "potatoes": "potato",
    "mangoes": "mango",
    "sheep": "sheep",
    "deer": "deer",
    "fish": "fish",
    "glasses": "glass",
    "buses": "bus",
}


@dataclass(frozen=True)
class ObjectSpec:
    """One object a prompt asks for.

    Attributes:
        noun (str): the detector's query, singular ("dog", "teddy bear").
        count (int | None): the exact number asked for, or None for at least one ("a dog").
        colour (str | None): one of `COLOURS`, or None.
    """

    noun: str
    count: int | None = None
    colour: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    """The objects of a prompt, in prompt order, and how object 0 stands to object 1.

    Attributes:
        objects (tuple[ObjectSpec, ...]): at least one.
        relation (str | None): one of `RELATIONS` ("left of": object 0 is left of object 1), or None.
    """

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None


def singular(word: str) -> str:
    """The singular of an English plural noun by simple rules (see the module docstring); other words unchanged.

    Example:
        >>> [singular(w) for w in ["dogs", "benches", "cherries", "people", "glass", "bus", "mice"]]
        ['dog', 'bench', 'cherry', 'person', 'glass', 'bus', 'mouse']
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def plural(noun: str, n: int) -> str:
    """`noun` for `n` things: unchanged for 1, else a simple English plural of its last word (for messages).

    Example:
        >>> plural("dog", 2), plural("bench", 0), plural("person", 3), plural("dog", 1)
        ('dogs', 'benches', 'people', 'dog')
    """
    if n == 1:
        return noun
    head, _, last = noun.rpartition(" ")
    irregular = {v: k for k, v in _IRREGULAR.items()}
    if last in irregular:
        last = irregular[last]
    elif last.endswith(("ch", "sh", "s", "x", "z")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in set("aeiou"):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}".strip()


def _phrase(words: list[str], prompt: str) -> ObjectSpec:
    """`[a|an|the|number] [colour] noun` -> ObjectSpec (ValueError for anything else)."""
    count, colour, rest, article = None, None, list(words), False
    if rest and (rest[0] in NUMBERS or rest[0].isdigit()):
        count = NUMBERS.get(rest[0]) or int(rest[0])
        rest = rest[1:]
    elif rest and rest[0] in _ARTICLES:
        article, rest = True, rest[1:]
    if len(rest) > 1 and rest[0] in (*COLOURS, "grey"):  # "a red orange": the last word is the noun
        colour, rest = ("gray" if rest[0] == "grey" else rest[0]), rest[1:]
    noun_ok = 1 <= len(rest) <= 2 and not any(w in _STOP or w in NUMBERS or w in _ARTICLES for w in rest)
    noun_ok = noun_ok and all(w.isalpha() for w in rest) and not any(w in (*COLOURS, "grey") for w in rest[:-1])
    noun_ok = noun_ok and rest[-1] not in set(COLOURS) - {"orange"} | {"grey"}  # "a red and white bus" is refused
    # "two dogs barked" is a noun and a verb: a counted two-word noun must end in a plural.
    if noun_ok and count is not None and count > 1 and len(rest) == 2:
        noun_ok = singular(rest[-1]) != rest[-1] or rest[-1] in _IRREGULAR
    if not noun_ok:
        raise ValueError(
            f"Cannot read {' '.join(words)!r} in the prompt {prompt!r}: object_spec reads noun phrases "
            "'[a|an|the|number] [colour] noun' (a noun of one or two words) joined by ',', 'and' or a relation "
            f"({', '.join(RELATIONS)}); rewrite the prompt in that form, e.g. 'a photo of two dogs'."
        )
    if count is not None and count > 1 or not article and count is None:
        rest[-1] = singular(rest[-1])
    return ObjectSpec(" ".join(rest), count, colour)


def object_spec(prompt: str) -> PromptSpec:
    """The objects, counts, colours and relation a GenEval- or T2I-CompBench-style prompt asks for.

    Args:
        prompt (str): e.g. "a photo of two dogs", "a red book on the left of a yellow cup".

    Returns:
        PromptSpec: objects in prompt order; `relation` relates object 0 to object 1 (see the module docstring).

    Raises:
        ValueError: `prompt` is not a string, or has words outside the grammar of the module docstring (named).

    Example:
        >>> object_spec("a photo of a dog right of a cat")
        PromptSpec(objects=(ObjectSpec(noun='dog', count=None, colour=None), ObjectSpec(noun='cat', count=None, colour=None)), relation='right of')
    """  # noqa: E501
    if not isinstance(prompt, str):
        raise ValueError(f"`prompt` is a {type(prompt).__name__}; pass a string such as 'a photo of two dogs'.")
    text = " ".join(prompt.lower().replace(",", " , ").split()).rstrip(" .")
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    relation, parts = None, [text]
    found = _RELATION_RE.search(f" {text} ")
    if found:  # offsets in " text " are one more than in text
        relation = _RELATION_WORDS[found.group(1)]
        parts = [text[: found.start()], text[found.end() - 1 :]]
    objects = []
    for part in parts:
        for chunk in re.split(r"\s*,\s*and\s+|\s*,\s*|\s+and\s+", part.strip()):
            objects.append(_phrase(chunk.split(), prompt))
    if found and len(objects) != 2:
        raise ValueError(
            f"The prompt {prompt!r} relates {len(objects)} objects with {found.group(1)!r}; object_spec reads one "
            "object on each side of a relation, e.g. 'a dog left of a cat'."
        )
    return PromptSpec(tuple(objects), relation)
