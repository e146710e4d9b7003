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

`prompt_negatives(caption)` gives the same edits of a prompt with no scene to check them against (for guidance away
from them while generating, `sampling.contrast`): replacement colors and shapes named in the caption come first; it
also gives one phrase of two alone (`DROP_PHRASE`), true of the prompt's images but missing an object.

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
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .captions import Caption, Phrase, parse
from .palette import COLORS, SHAPES, SIZES
from .scenes import Scene
from .semantics import SAFETY_MARGIN, evaluate

__all__ = ["DROP_PHRASE", "KINDS", "Negative", "hard_negatives", "prompt_negatives"]

DROP_PHRASE = "drop_phrase"  # a generation-only kind of `prompt_negatives`: one phrase of two alone
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


def _candidates(kind: str, caption: Caption, present, rng: np.random.Generator) -> Iterator[Caption | None]:
    """Candidates of `kind`, replacements named by `present` (objects or phrases: `.color`, `.shape`) first."""
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
        colors = {o.color for o in present}
        for i in rng.permutation(len(phrases)):
            for color in _ordered(rng, colors, COLORS, phrases[i].color):
                yield _with_phrase(caption, int(i), color=color)
    elif kind == "wrong_shape":
        shapes = {o.shape for o in present}
        for i in rng.permutation(len(phrases)):
            for shape in _ordered(rng, shapes, SHAPES, phrases[i].shape):
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
        for candidate in _candidates(kind, caption, scene.objects, rng):
            if candidate is None or candidate == caption or (allowed is not None and not allowed(candidate)):
                continue
            if not evaluate(scene.objects, candidate, margin=-SAFETY_MARGIN).ok:
                negatives.append(Negative(kind, candidate))
                break
    return negatives


def prompt_negatives(
    caption: Caption | str, rng: np.random.Generator | int = 0, kinds: Sequence[str] | None = None
) -> list[Negative]:
    """Negatives of a prompt with no scene, for guidance away from them while generating: for each kind that applies to
    its category, the first candidate (colors and shapes the caption names first), unchecked, since no image exists
    yet. Swapped attributes, the opposite relation and another count are false for any image the prompt is true of.

    One more kind, `"drop_phrase"` (two objects and spatial relations; not in `KINDS`, not a hard negative: it is
    true of the prompt's images), gives each phrase alone as a single-object caption ("a red circle"): the prompt
    against it asks for the object the other phrase names, which generation often leaves out.

    Args:
        caption (Caption | str): the prompt, parsed if a string (`captions.parse`).
        rng (np.random.Generator | int): source (or seed) of the order of replacements. Default 0.
        kinds (Sequence[str] | None): the kinds to give, of `KINDS` and "drop_phrase"; None: every kind of `KINDS`
            that applies to the caption's category. Default None.

    Returns:
        list[Negative]: at most one per kind (two for "drop_phrase"), in the order of `kinds`.

    Example:
        >>> [n.caption.text for n in prompt_negatives("a red circle to the left of a blue square")]
        ['a blue circle to the left of a red square', 'a red circle to the right of a blue square', \
'a blue circle to the left of a blue square', 'a red square to the left of a blue square']
        >>> [n.caption.text for n in prompt_negatives("a red circle and a blue square", kinds=["drop_phrase"])]
        ['a red circle', 'a blue square']
    """
    bad = sorted(set(kinds or ()) - {*KINDS, DROP_PHRASE})
    if bad or isinstance(kinds, str):
        raise ValueError(f"`kinds` is {kinds!r}; pass names of {(*KINDS, DROP_PHRASE)}, or None.")
    caption = parse(caption) if isinstance(caption, str) else caption
    rng = np.random.default_rng(rng)
    negatives = []
    for kind in _KINDS_OF[caption.category] if kinds is None else kinds:
        if kind == DROP_PHRASE:
            if caption.category in ("two_objects", "spatial"):
                negatives += [Negative(kind, Caption("single", (phrase,))) for phrase in caption.phrases]
            continue
        if kind not in _KINDS_OF[caption.category]:
            continue
        candidates = _candidates(kind, caption, caption.phrases, rng)
        candidate = next((c for c in candidates if c not in (None, caption)), None)
        if candidate is not None:
            negatives.append(Negative(kind, candidate))
    return negatives
