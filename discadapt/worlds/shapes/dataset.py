"""Seeded examples of the shapes world: a scene, a true caption of one category, its hard negatives and, for a
referring caption, the referent.

Each category builds the scene its caption needs, then adds distractors up to 1-4 objects in all:

- single: the named object plus 0-3 distractors of any kind.
- two_objects: the two named kinds plus 0-2 distractors.
- counting: `count` (1-4, uniform) objects of the named kind plus distractors of other kinds, 4 objects at most.
- spatial: the two named kinds, placed until the relation holds with margin `SAFETY_MARGIN`, plus 0-2 distractors.
- referring: a target plus 1-3 distractors that share its shape (half of them) or its color (a quarter); the
  caption is drawn from the target's unambiguous expressions (`referring.py`).

Splits (`splits.py`): in "train" and "test_id" every object and every caption, negatives included, avoids the
held-out combinations; in "test_ood" the caption names a held-out pair (in a referring caption, with its color),
or, for half of the spatial captions, a held-out triple of two training pairs. Example `i` of split `split` and
seed `seed` is drawn from the seed sequence `(seed, SPLITS.index(split), i)`: splits never share draws.

Example:
    >>> from discadapt.worlds.shapes import make_dataset
    >>> data = make_dataset(100, split="train", seed=0)
    >>> example = data[3]
    >>> example.caption.text
    'a purple triangle to the right of a cyan circle'
    >>> for n in example.negatives:
    ...     print(f"{n.kind:16} {n.caption.text}")
    swap_attributes  a cyan triangle to the right of a purple circle
    swap_relation    a purple triangle to the left of a cyan circle
    wrong_color      a purple triangle to the right of a purple circle
    wrong_shape      a purple circle to the right of a cyan circle
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .captions import CATEGORIES, Caption, Phrase, parse
from .negatives import Negative, hard_negatives
from .palette import COLORS, SHAPES, SIZES, check_choice, check_image_size
from .referring import referring_expressions
from .scenes import BACKGROUNDS, MAX_OBJECTS, Obj, Scene, place_objects
from .semantics import SAFETY_MARGIN, evaluate, in_relation
from .splits import SPLITS, HeldOut, canonical_triple, held_out

__all__ = ["Example", "check_category_weights", "draw_categories", "make_dataset", "make_example"]

_ALL_KINDS = [(c, s) for c in COLORS for s in SHAPES]
_RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class Example:
    """One example.

    Attributes:
        split (str): one of `splits.SPLITS`.
        scene (Scene): the scene.
        caption (Caption): a caption true of the scene.
        negatives (tuple[Negative, ...]): hard negatives, each false of the scene.
        target (int | None): for a referring caption, the index of its referent in `scene.objects`, else None.
    """

    split: str
    scene: Scene
    caption: Caption
    negatives: tuple[Negative, ...]
    target: int | None = None

    @property
    def referent(self) -> Obj | None:
        """The object a referring caption picks out (its `box` / `cxcywh` is the grounding target), else None."""
        return None if self.target is None else self.scene.objects[self.target]

    def to_dict(self) -> dict:
        """JSON-ready dict (captions as text); `Example.from_dict` reads it back."""
        return {
            "split": self.split,
            "scene": self.scene.to_dict(),
            "caption": self.caption.text,
            "negatives": [{"kind": n.kind, "caption": n.caption.text} for n in self.negatives],
            "target": self.target,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Example:
        """The example written by `to_dict`."""
        negatives = tuple(Negative(n["kind"], parse(n["caption"])) for n in data["negatives"])
        return cls(data["split"], Scene.from_dict(data["scene"]), parse(data["caption"]), negatives, data["target"])


class _Draw:
    """Random choices shared by the category builders of one example."""

    def __init__(self, rng: np.random.Generator, split: str, held: HeldOut, image_size: int, touching: bool):
        self.rng, self.held, self.image_size, self.touching = rng, held, image_size, touching
        self.ood = split == "test_ood"
        train = held.train_kinds()
        self.focus = sorted(held.pairs) if self.ood else train  # kinds a caption is about
        self.others = _ALL_KINDS if self.ood else train  # kinds of everything else

    def pick(self, kinds: Sequence[tuple[str, str]], avoid=()) -> tuple[str, str]:
        kinds = [k for k in kinds if k not in avoid]
        return kinds[int(self.rng.integers(len(kinds)))]

    def size(self) -> str:
        return str(self.rng.choice(list(SIZES)))

    def distractors(self, n: int, avoid=()) -> list[tuple[str, str, str]]:
        return [(*self.pick(self.others, avoid), self.size()) for _ in range(n)]

    def place(self, specs: list[tuple[str, str, str]]):
        return place_objects(self.rng, specs, self.image_size, self.touching)


def _single(d: _Draw):
    kind = d.pick(d.focus)
    objects = d.place([(*kind, d.size())] + d.distractors(int(d.rng.integers(0, 4))))
    return objects, Caption("single", (Phrase(kind[1], kind[0]),)), None


def _two_objects(d: _Draw):
    first = d.pick(d.focus)
    second = d.pick(d.others, avoid=[first])
    first, second = (first, second) if d.rng.random() < 0.5 else (second, first)
    objects = d.place([(*first, d.size()), (*second, d.size())] + d.distractors(int(d.rng.integers(0, 3))))
    return objects, Caption("two_objects", (Phrase(first[1], first[0]), Phrase(second[1], second[0]))), None


def _counting(d: _Draw):
    kind, count = d.pick(d.focus), int(d.rng.integers(1, 5))
    specs = [(*kind, d.size()) for _ in range(count)]
    objects = d.place(specs + d.distractors(int(d.rng.integers(0, MAX_OBJECTS - count + 1)), avoid=[kind]))
    return objects, Caption("counting", (Phrase(kind[1], kind[0]),), count=count), None


def _spatial(d: _Draw):
    if d.ood and d.held.triples and d.rng.random() < 0.5:  # a held-out triple of two training pairs
        triple = sorted(d.held.triples)[int(d.rng.integers(len(d.held.triples)))]
        first, relation, second = triple[:2], triple[2], triple[3:]
        if d.rng.random() < 0.5:
            first, relation, second = second, {"left of": "right of", "above": "below"}[relation], first
    else:
        first = d.pick(d.focus)
        second = d.pick(d.others, avoid=[first])
        first, second = (first, second) if d.rng.random() < 0.5 else (second, first)
        relation = _RELATIONS[int(d.rng.integers(4))]
        if not d.ood and canonical_triple(first, relation, second) in d.held.triples:
            return None, None, None
    specs = [(*first, d.size()), (*second, d.size())] + d.distractors(int(d.rng.integers(0, 3)))
    for _ in range(50):
        objects = d.place(specs)
        if objects is not None and in_relation(objects[0], objects[1], relation, SAFETY_MARGIN):
            caption = Caption("spatial", (Phrase(first[1], first[0]), Phrase(second[1], second[0])), relation=relation)
            return objects, caption, None
    return None, None, None


def _referring(d: _Draw):
    target = d.pick(d.focus)
    specs = [(*target, d.size())]
    for _ in range(int(d.rng.integers(1, 4))):
        u = d.rng.random()
        if u < 0.5:  # same shape, any color
            kind = d.pick([k for k in d.others if k[1] == target[1]] or d.others)
        elif u < 0.75:  # same color, any shape
            kind = d.pick([k for k in d.others if k[0] == target[0]] or d.others)
        else:
            kind = d.pick(d.others)
        specs.append((*kind, d.size()))
    objects = d.place(specs)
    if objects is None:
        return None, None, None
    expressions = referring_expressions(objects, 0)
    if d.ood:  # the held-out pair must be named
        expressions = [c for c in expressions if c.phrases[0].color is not None]
    if not expressions:
        return None, None, None
    return objects, expressions[int(d.rng.integers(len(expressions)))], 0


_BUILDERS = {
    "single": _single,
    "two_objects": _two_objects,
    "counting": _counting,
    "spatial": _spatial,
    "referring": _referring,
}


def make_example(
    seed: int | Sequence[int],
    category: str,
    split: str = "train",
    image_size: int = 64,
    touching: bool = False,
    background: str = "plain",
    held: HeldOut | None = None,
) -> Example:
    """One seeded example (see the module docstring): same arguments, same example.

    Args:
        seed (int | Sequence[int]): entropy of `np.random.default_rng`.
        category (str): one of `captions.CATEGORIES`.
        split (str): one of `splits.SPLITS`. Default "train".
        image_size (int): image side in pixels, >= 32. Default 64.
        touching (bool): objects of different colors placed flush against each other (`scenes.place_objects`).
            Default False.
        background (str): "plain" or "textured". Default "plain".
        held (HeldOut | None): held-out combinations; None means `held_out()`. Default None.
    """
    check_choice("category", category, CATEGORIES)
    check_choice("split", split, SPLITS)
    check_image_size(image_size)
    check_choice("background", background, BACKGROUNDS)
    held = held_out() if held is None else held
    if split == "test_ood" and not held.pairs:
        raise ValueError("`held` holds no (color, shape) pair; the test_ood split needs some: held_out(num_pairs=4).")
    rng = np.random.default_rng(seed)
    draw = _Draw(rng, split, held, image_size, touching)
    for _ in range(1000):
        objects, caption, target = _BUILDERS[category](draw)
        if objects is None:
            continue
        scene = Scene(image_size, objects, background, int(rng.integers(2**31)))
        if not evaluate(scene.objects, caption, SAFETY_MARGIN).ok:  # a distractor spoilt the caption
            continue
        allowed = None if draw.ood else (lambda c: not held.names(c))
        negatives = tuple(hard_negatives(scene, caption, rng, allowed))
        return Example(split, scene, caption, negatives, target)
    raise RuntimeError(f"no {category} example found in 1000 draws for seed {seed!r}")


def make_dataset(
    num_examples: int,
    split: str = "train",
    seed: int = 0,
    categories: Sequence[str] = CATEGORIES,
    **kwargs,
) -> list[Example]:
    """`num_examples` examples, category `categories[i % len(categories)]` for example i.

    Args:
        num_examples (int): how many, >= 1.
        split (str): one of `splits.SPLITS`. Default "train".
        seed (int): dataset seed; example i uses seed `(seed, SPLITS.index(split), i)`. Default 0.
        categories (Sequence[str]): categories to cycle through. Default all of `captions.CATEGORIES`.
        **kwargs: `image_size`, `touching`, `background`, `held`, passed to `make_example`.
    """
    if not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"`num_examples` is {num_examples!r}; pass an int >= 1.")
    categories = [categories] if isinstance(categories, str) else list(categories)
    if not categories:
        raise ValueError("`categories` is empty; pass one or more of " + ", ".join(CATEGORIES) + ".")
    for category in categories:
        check_choice("category", category, CATEGORIES)
    check_choice("split", split, SPLITS)
    index = SPLITS.index(split)
    return [
        make_example((seed, index, i), categories[i % len(categories)], split, **kwargs) for i in range(num_examples)
    ]


def check_category_weights(weights) -> None:
    """Raise a ValueError unless `weights` maps known caption categories to weights >= 0, not all 0."""
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"`category_weights` is {weights!r}; pass a dict of category -> weight.")
    unknown = sorted(set(weights) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"`category_weights` names {unknown}; pick among {', '.join(CATEGORIES)}.")
    if any(not w >= 0 for w in weights.values()) or not sum(weights.values()) > 0:
        raise ValueError(f"`category_weights` is {weights!r}; pass weights >= 0, not all 0.")


def draw_categories(rng: np.random.Generator, weights: dict[str, float], n: int) -> list[str]:
    """`n` caption categories drawn from `rng` in proportion to `weights` (the trainers' category mix)."""
    names = list(weights)
    p = np.array([weights[c] for c in names], dtype=float)
    return [names[i] for i in rng.choice(len(names), size=n, p=p / p.sum())]
