"""Held-out combinations, which make the out-of-distribution test split.

Two kinds of combination are held out, chosen once by a seed (`held_out(seed=0)`, the default everywhere):

- (color, shape) pairs: 4 of the 21, at most one per color and two per shape, so that every color and every
  shape is still seen in training. With seed 0 these are yellow square, white circle, cyan square and red
  triangle. No training scene contains such an object, and no training caption (positive or negative) names one.
- spatial triples (color, shape, relation, color, shape) of two different training pairs: 10% of them (54 of the
  17 x 16 x 2 = 544), drawn with the seed. A triple and its converse are one combination: "A left of B" is
  "B right of A", "A above B" is "B below A" (`canonical_triple`). No training caption names a held-out triple;
  training images may still show such an arrangement, uncaptioned.

Splits (`SPLITS`): "train" and "test_id" (in distribution: new scenes of the training distribution) avoid every
held-out combination; in "test_ood" every positive caption names at least one held-out pair or triple.

Example:
    >>> held = held_out()
    >>> sorted(held.pairs)
    [('cyan', 'square'), ('red', 'triangle'), ('white', 'circle'), ('yellow', 'square')]
    >>> len(held.triples)
    54
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .captions import Caption
from .palette import COLORS, SHAPES

__all__ = ["SPLITS", "HeldOut", "canonical_triple", "caption_combinations", "held_out"]

SPLITS = ("train", "test_id", "test_ood")

_CONVERSE = {"right of": "left of", "below": "above"}


def canonical_triple(first: tuple[str, str], relation: str, second: tuple[str, str]) -> tuple[str, ...]:
    """`(color, shape, relation, color, shape)` with relation "left of" or "above" (converses are swapped)."""
    if relation in _CONVERSE:
        first, relation, second = second, _CONVERSE[relation], first
    return (*first, relation, *second)


def caption_combinations(caption: Caption) -> tuple[set[tuple[str, str]], set[tuple[str, ...]]]:
    """The (color, shape) pairs and canonical spatial triples that `caption` names."""
    pairs = {(p.color, p.shape) for p in caption.phrases if p.color is not None}
    triples = set()
    if caption.category == "spatial":
        first, second = ((p.color, p.shape) for p in caption.phrases)
        triples.add(canonical_triple(first, caption.relation, second))
    return pairs, triples


@dataclass(frozen=True)
class HeldOut:
    """Held-out combinations.

    Attributes:
        pairs (frozenset[tuple[str, str]]): held-out (color, shape) pairs.
        triples (frozenset[tuple[str, ...]]): held-out canonical (color, shape, relation, color, shape) triples.
    """

    pairs: frozenset
    triples: frozenset

    def names(self, caption: Caption) -> bool:
        """Whether `caption` names a held-out pair or triple."""
        pairs, triples = caption_combinations(caption)
        return bool(pairs & self.pairs or triples & self.triples)

    def train_kinds(self) -> list[tuple[str, str]]:
        """The (color, shape) pairs seen in training."""
        return [(c, s) for c in COLORS for s in SHAPES if (c, s) not in self.pairs]


@lru_cache(maxsize=8)
def held_out(seed: int = 0, num_pairs: int = 4, triple_fraction: float = 0.1) -> HeldOut:
    """The held-out combinations drawn with `seed` (see the module docstring).

    Args:
        seed (int): seed of both draws. Default 0.
        num_pairs (int): held-out (color, shape) pairs, 0 to the number of colors. Default 4.
        triple_fraction (float): fraction in [0, 1) of the spatial triples over training pairs to hold out.
            Default 0.1.
    """
    if not isinstance(num_pairs, int) or not 0 <= num_pairs <= len(COLORS):
        raise ValueError(f"`num_pairs` is {num_pairs!r}; pass an int from 0 to {len(COLORS)} (one per color at most).")
    if not 0 <= triple_fraction < 1:
        raise ValueError(f"`triple_fraction` is {triple_fraction!r}; pass a fraction in [0, 1).")
    rng = np.random.default_rng(seed)
    all_pairs = [(c, s) for c in COLORS for s in SHAPES]
    per_shape = math.ceil(num_pairs / len(SHAPES))
    pairs: list[tuple[str, str]] = []
    for i in rng.permutation(len(all_pairs)):
        color, shape = all_pairs[i]
        used_shapes = [s for _, s in pairs]
        if len(pairs) < num_pairs and color not in [c for c, _ in pairs] and used_shapes.count(shape) < per_shape:
            pairs.append((color, shape))
    seen = [p for p in all_pairs if p not in pairs]
    triples = [(*a, r, *b) for a in seen for b in seen if a != b for r in ("left of", "above")]
    chosen = rng.permutation(len(triples))[: round(triple_fraction * len(triples))]
    return HeldOut(frozenset(pairs), frozenset(triples[i] for i in chosen))
